"""Face recognition: accuracy on real photos and 64x64 crops, enrolment, thresholds, the service."""

from __future__ import annotations

import csv
import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from iraas.model.faces import UNKNOWN, FaceEmbedder, FaceRecognizer, Gallery, enroll_dir

from .conftest import DATASETS, IMAGENET
from .images import encode
from .service import Service, course_post

IDS = DATASETS / "faces-identities"
COURSE = DATASETS / "cse546-faces"


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return FaceEmbedder()


@pytest.fixture(scope="module")
def people() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    with open(IDS / "labels.csv", newline="") as f:
        for row in sorted(csv.DictReader(f), key=lambda r: r["filename"]):
            out.setdefault(row["identity"], []).append(IDS / "images" / row["filename"])
    return out


def crop64(path: Path, embedder: FaceEmbedder) -> bytes:
    """The photo cropped to a square around its largest face, 64x64, like the course images."""
    img = Image.open(path).convert("RGB")
    x, y, w, h = embedder.detect(np.asarray(img))[0].box
    side, cx, cy = max(w, h) * 1.3, x + w / 2, y + h / 2
    box = tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return encode(img.crop(box).resize((64, 64), Image.Resampling.BILINEAR), "JPEG", quality=95)


def _accuracy(embedder: FaceEmbedder, people: dict[str, list[Path]], load: object, tmp: Path) -> float:
    for person, files in people.items():
        (tmp / person).mkdir(parents=True)
        (tmp / person / files[0].name).write_bytes(load(files[0]))  # type: ignore[operator]
    gallery = Gallery()
    assert enroll_dir(tmp, gallery, embedder) == []
    rec = FaceRecognizer(embedder, lambda: gallery)
    probes = [(person, f) for person, files in people.items() for f in files[1:]]
    answers = rec.classify([load(f) for _, f in probes])  # type: ignore[operator]
    right = sum(a.label == person for (person, _), a in zip(probes, answers, strict=True))  # type: ignore[union-attr]
    assert len(probes) == 48
    return right / len(probes)


def test_recognises_people_in_full_photos(
    embedder: FaceEmbedder, people: dict[str, list[Path]], tmp_path: Path
) -> None:
    assert len(people) == 13
    assert _accuracy(embedder, people, Path.read_bytes, tmp_path) >= 0.95


def test_recognises_people_in_64px_crops(embedder: FaceEmbedder, people: dict[str, list[Path]], tmp_path: Path) -> None:
    assert _accuracy(embedder, people, lambda p: crop64(p, embedder), tmp_path) >= 0.95


def test_answer_carries_similarity_and_runner_up(embedder: FaceEmbedder, people: dict[str, list[Path]]) -> None:
    gallery = Gallery()
    for person in ("id00", "id01"):
        (emb,) = embedder.embed(
            [
                embedder.align(
                    np.asarray(Image.open(people[person][0]).convert("RGB")),
                    embedder.detect(np.asarray(Image.open(people[person][0])))[0],
                )
            ]
        )
        gallery.add(person, emb, person)
    (pred,) = FaceRecognizer(embedder, lambda: gallery).classify([people["id00"][1].read_bytes()])
    assert pred.top[0].label == "id00" and pred.top[1].label == "id01"  # type: ignore[union-attr]
    assert 1 >= pred.top[0].probability > pred.top[1].probability  # type: ignore[union-attr]
    # no face and a threshold: "unknown", not an error
    tench = (IMAGENET / "images" / "n01440764_tench.JPEG").read_bytes()
    (odd,) = FaceRecognizer(embedder, lambda: gallery, threshold=0.5).classify([tench])
    assert odd.label == UNKNOWN  # type: ignore[union-attr]
    (bad,) = FaceRecognizer(embedder, lambda: gallery).classify([b"not an image"])
    assert getattr(bad, "code", None) == "not_an_image"


def _course_gallery(root: Path) -> Path:
    with open(COURSE / "labels-1000.csv", newline="") as f:
        names = {r["Image"]: r["Results"] for r in csv.DictReader(f)}
    for f in sorted((COURSE / "face_images_1000").iterdir())[:20]:
        (root / names[f.stem]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / names[f.stem] / f.name)
    return root


def test_enroll_command_reports_and_adds_only_new_images(tmp_path: Path) -> None:
    root = _course_gallery(tmp_path / "gallery")
    (root / "Nobody").mkdir()
    shutil.copy(IMAGENET / "images" / "n01440764_tench.JPEG", root / "Nobody" / "fish.jpg")
    run = [sys.executable, "-m", "iraas.cli", "enroll", str(root)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "enrolled 21 new image(s)" in first.stdout and "Paul" in first.stdout
    assert "Nobody/fish.jpg: no face" in first.stderr
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert "enrolled 0 new image(s)" in again.stdout
    empty = subprocess.run(
        [sys.executable, "-m", "iraas.cli", "enroll", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert empty.returncode == 2 and "nobody" in empty.stdout


def test_bench_model_faces(tmp_path: Path) -> None:
    root = _course_gallery(tmp_path / "gallery")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in sorted((COURSE / "face_images_100").iterdir())[:8]:
        shutil.copy(f, imgs / f.name)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iraas.cli",
            "bench",
            "model",
            str(imgs),
            "--model",
            "faces",
            "--gallery",
            str(root),
            "--procs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "8 images in" in out.stdout and "img/s" in out.stdout


@pytest.fixture(scope="module")
def face_svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("faces")
    svc = Service(
        base / "data", model="faces", gallery=_course_gallery(base / "gallery"), max_workers=2, scale_in_after_s=2
    ).start()
    yield svc
    svc.stop()


def _course_100() -> tuple[list[Path], dict[str, str]]:
    with open(COURSE / "labels-100.csv", newline="") as f:
        truth = {r["Image"]: r["Results"] for r in csv.DictReader(f)}
    return sorted((COURSE / "face_images_100").iterdir()), truth


@pytest.mark.parametrize("field", ["inputFile", "myfile"])  # the 2024 client's field, the 2021-22 clients'
def test_course_face_workload_100_concurrent(face_svc: Service, field: str) -> None:
    files, truth = _course_100()
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(functools.partial(course_post, face_svc.url, field=field), files))
    assert answers == [f"{f.stem}:{truth[f.stem]}" for f in files]


def test_course_2022_clients_get_plain_labels_on_their_own_paths(tmp_path: Path) -> None:
    """The 2022 faces version: "for test_00.jpg the output should be `Paul` in plain text", at the
    path each deployment chose; 100 concurrent clients per path, as the course generator runs."""
    svc = Service(
        tmp_path / "data",
        model="faces",
        gallery=_course_gallery(tmp_path / "gallery"),
        max_workers=2,
        course_reply="label",
        course_paths="/upload,/getfacerecognizationperImage",
    ).start()
    try:
        files, truth = _course_100()
        for route, field in (("/getfacerecognizationperImage", "myfile"), ("/upload", "inputFile")):
            post = functools.partial(course_post, svc.url, field=field, route=route)
            with ThreadPoolExecutor(100) as pool:
                answers = list(pool.map(post, files))
            assert answers == [truth[f.stem] for f in files], route
        # "/" is no longer a course path: its POST is refused as JSON, and the page still loads
        refused = httpx.post(svc.url + "/", files={"myfile": files[0].read_bytes()})
        assert refused.status_code == 405 and refused.json()["error"] == "method_not_allowed", refused.text
        assert httpx.get(svc.url + "/").status_code == 200
    finally:
        svc.stop()


def test_gallery_api_teaches_a_running_service(face_svc: Service, people: dict[str, list[Path]]) -> None:
    before = httpx.get(face_svc.url + "/v1/gallery").json()
    assert before["people"]["Paul"] >= 1 and "Newcomer" not in before["people"]
    probe = people["id05"][1]
    r = httpx.post(
        face_svc.url + "/v1/gallery/Newcomer", files={"files": (probe.name, people["id05"][0].read_bytes())}, timeout=60
    )
    assert r.status_code == 200 and r.json()["images"] == 1, r.text
    assert httpx.get(face_svc.url + "/v1/gallery").json()["people"]["Newcomer"] == 1

    seen: list[dict[str, object]] = []  # what each try got: the failure message shows them

    def answer() -> str | None:
        got = httpx.post(
            face_svc.url + "/v1/recognitions", files={"files": (probe.name, probe.read_bytes())}, timeout=60
        ).json()[0]
        seen.append({k: got.get(k) for k in ("status", "label", "cached", "worker", "error")})
        return got["label"] if got["label"] == "Newcomer" else None

    # the enrolment's answer means the gallery has them: the very next recognition, whichever
    # worker takes it, answers with the new gallery (a worker that has not read it yet reads it
    # first), and no answer cached for the gallery before is served for it
    assert [answer() for _ in range(5)] == ["Newcomer"] * 5, seen
    bad = httpx.post(face_svc.url + "/v1/gallery/..%2F..", files={"files": ("x.jpg", b"nope")})
    assert bad.status_code in (400, 404)


def test_empty_gallery_is_a_clear_error_at_start(tmp_path: Path) -> None:
    (tmp_path / "gallery").mkdir()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iraas.cli",
            "up",
            "--model",
            "faces",
            "--gallery",
            str(tmp_path / "gallery"),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "gallery" in out.stderr and "empty" in out.stderr


def test_the_embedding_network_on_openvino_gives_the_same_people(
    embedder: FaceEmbedder, people: dict[str, list[Path]], tmp_path: Path
) -> None:
    """SFace with its int8 blocks unpacked to fp32 computes what OpenCV computes (OpenVINO fp32),
    and bf16 (this machine's CPU has it: fails loudly on one without) changes no answer."""
    from iraas.model.compare_faces import faces

    crops = faces(embedder, [f for files in people.values() for f in files])
    reference = embedder.embed(crops)
    fp32 = FaceEmbedder(runtime="openvino", precision="fp32")
    assert fp32.runs_on == "openvino fp32"
    assert float(np.min(np.sum(fp32.embed(crops) * reference, axis=1))) > 0.9999
    bf16 = FaceEmbedder(runtime="openvino", precision="bf16")
    assert float(np.min(np.sum(bf16.embed(crops) * reference, axis=1))) > 0.99
    assert _accuracy(bf16, people, Path.read_bytes, tmp_path / "bf16") == _accuracy(
        embedder, people, Path.read_bytes, tmp_path / "reference"
    )
    from iraas.model.recognizer import load_recognizer
    from iraas.model.spec import SpecError

    with pytest.raises(SpecError, match="a precision needs --runtime"):  # OpenCV's engine has one: fp32
        load_recognizer("faces", gallery=Gallery, precision="bf16")


def test_bench_compares_the_runtimes_for_faces_on_the_users_gallery(
    people: dict[str, list[Path]], tmp_path: Path
) -> None:
    gallery, probes = tmp_path / "gallery", tmp_path / "probes"
    probes.mkdir()
    for person, files in people.items():
        (gallery / person).mkdir(parents=True)
        shutil.copy(files[0], gallery / person / files[0].name)
        for f in files[1:3]:
            shutil.copy(f, probes / f.name)
    cmd = [sys.executable, "-m", "iraas.cli", "bench", "model", str(probes), "--model", "faces", "--runtimes", "all"]
    out = subprocess.run([*cmd, "--gallery", str(gallery)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in out.stdout.splitlines()}
    assert {("opencv", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")} <= set(rows)
    assert rows[("opencv", "fp32")][-1] == "100.0%"  # the reference
    assert rows[("openvino", "fp32")][-1] == "100.0%"  # the same network, unpacked: the same people
    assert f"({len(list(probes.iterdir()))} images" in out.stdout and "recommended here: " in out.stdout
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "needs a gallery" in refused.stderr
