"""The typed client and `iraas recognize` against a real service (with API keys), and one
request followed by its id through the JSON log lines of the web tier and the worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iraas.client import Client, IraasError
from iraas.model.classifier import Classifier

from .conftest import IMAGENET
from .service import Service, create_key, free_port

PHOTOS = sorted((IMAGENET / "images").iterdir())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> object:
    data = tmp_path_factory.mktemp("client") / "data"
    key = create_key(data, "alice")
    svc = Service(data, max_workers=2, log_format="json").start()
    yield svc, key
    svc.stop()


def _labels(classifier: Classifier, files: list[Path]) -> list[str]:
    return [p.label for p in classifier.predict([f.read_bytes() for f in files])]


def test_recognize_paths_and_bytes_in_order(served: tuple[Service, str], classifier: Classifier) -> None:
    svc, key = served
    files = PHOTOS[10:16]
    with Client(svc.url, key, batch=4) as iraas:  # two requests: 4 + 2
        got = iraas.recognize([*files[:5], files[5].read_bytes()])
    assert [r.status for r in got] == ["done"] * 6
    assert [r.label for r in got] == _labels(classifier, files)
    assert [r.name for r in got] == [f.name for f in files[:5]] + ["image-2"]  # bytes get a made-up name
    assert all(r.confidence and r.top5 and r.timings["inference"] >= 0 for r in got)


def test_submit_then_wait_all_and_get(served: tuple[Service, str], classifier: Classifier) -> None:
    svc, key = served
    files = PHOTOS[20:23]
    with Client(svc.url, key) as iraas:
        queued = iraas.submit(files, request_id="trace-client-1")
        assert all(not r.final for r in queued) and len({r.id for r in queued}) == 3
        done = iraas.wait_all(r.id for r in queued)
        assert [r.label for r in done] == _labels(classifier, files)
        again = iraas.get(done[0].id)
    assert (again.id, again.label, again.request_id) == (done[0].id, done[0].label, "trace-client-1")


def test_refusals_raise_with_the_services_code(served: tuple[Service, str]) -> None:
    svc, key = served
    with Client(svc.url, "iraas_" + "x" * 43) as wrong, pytest.raises(IraasError) as refused:
        wrong.recognize(PHOTOS[0])
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    with Client(svc.url, key) as iraas, pytest.raises(IraasError) as bad:
        iraas.recognize(b"not an image at all")
    assert (bad.value.status, bad.value.code) == (415, "not_an_image") and bad.value.request_id
    with Client(svc.url, key) as iraas, pytest.raises(IraasError) as missing:
        iraas.get("0" * 32)
    assert missing.value.code == "not_found"


def test_the_command_prints_one_line_per_image(served: tuple[Service, str], classifier: Classifier) -> None:
    svc, key = served
    files = PHOTOS[30:33]
    env = {"IRAAS_API_KEY": key, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "iraas.cli", "recognize", svc.url]
    text = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, env=env, timeout=120)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    labels = _labels(classifier, files)
    assert [line.split(": ")[0] for line in lines] == [f.name for f in files]
    assert [line.split(": ")[1].rsplit(" (", 1)[0] for line in lines] == labels
    as_json = subprocess.run([*cmd, "--json", *map(str, files)], capture_output=True, text=True, env=env, timeout=120)
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["name"], r["label"], r["status"]) for r in rows] == [
        (f.name, x, "done") for f, x in zip(files, labels, strict=True)
    ]
    broken = subprocess.run(
        [*cmd, str(files[0]), str(Path(__file__))], capture_output=True, text=True, env=env, timeout=120
    )
    assert broken.returncode == 2 and "415 not_an_image" in broken.stderr  # a .py: the request is refused whole
    no_key = subprocess.run([*cmd, str(files[0])], capture_output=True, text=True, timeout=120, env={"PATH": "/bin"})
    assert no_key.returncode == 2 and "401 unauthorized" in no_key.stderr
    typo = subprocess.run([*cmd, str(files[0]), "nowhere.jpg"], capture_output=True, text=True, env=env, timeout=120)
    assert typo.returncode == 2 and "no such file: nowhere.jpg" in typo.stderr and "Traceback" not in typo.stderr
    down = [sys.executable, "-m", "iraas.cli", "recognize", f"http://127.0.0.1:{free_port()}", str(files[0])]
    gone = subprocess.run(down, capture_output=True, text=True, env=env, timeout=120)
    assert gone.returncode == 2 and "cannot reach" in gone.stderr and "Traceback" not in gone.stderr


def test_one_request_id_in_every_log_line_about_it(served: tuple[Service, str]) -> None:
    svc, key = served
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    import httpx

    sent = httpx.post(
        svc.url + "/v1/recognitions",
        files={"files": (PHOTOS[40].name, PHOTOS[40].read_bytes())},
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "follow-me-42", "traceparent": parent},
        timeout=60,
    )
    (answer,) = sent.json()
    assert answer["request_id"] == "follow-me-42" and sent.headers["x-request-id"] == "follow-me-42"
    logs = [svc.output(), *(f.read_text() for f in (svc.data_dir / "logs").glob("local-*.log"))]
    lines = [json.loads(line) for text in logs for line in text.splitlines() if line.startswith("{")]
    about = [line for line in lines if line.get("request_id") == "follow-me-42"]
    web = [line for line in about if line["logger"].startswith("iraas.web")]
    worker = [line for line in about if line["logger"] == "iraas.worker"]
    assert web and answer["id"] in web[0]["msg"] and web[0]["traceparent"] == parent
    assert worker and answer["id"] in worker[0]["msg"] and worker[0]["worker"].startswith("local-")
    assert worker[0]["traceparent"] == parent
    assert all(answer["id"] not in line["msg"] for line in lines if line not in about)  # none without the id
