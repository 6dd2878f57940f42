"""`iraas quantize`: an int8 model from the user's own images, served with --model."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import httpx
import onnx
import pytest

from iraas.model.builtin import resolve_model
from iraas.model.classifier import Classifier
from iraas.model.spec import load_spec

from .conftest import IMAGENET
from .service import Service

PHOTOS = sorted((IMAGENET / "images").iterdir())
CALIBRATION, HELD_OUT = PHOTOS[1::10], [p for i, p in enumerate(PHOTOS) if i % 10 != 1][:150]


def _iraas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iraas.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def int8_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8")
    calibration = root / "calibration"
    calibration.mkdir()
    for p in CALIBRATION:
        (calibration / p.name).symlink_to(p)
    (calibration / "notes.jpg").write_bytes(b"not an image")  # skipped, not fatal
    out = _iraas("quantize", "--calibration", str(calibration), "--out", str(root / "lite0-int8.toml"))
    assert out.returncode == 0, out.stderr
    assert f"calibrated on {len(CALIBRATION)} image(s)" in out.stdout
    return root / "lite0-int8.toml"


def test_the_int8_model_is_quantized_and_keeps_top1(int8_spec: Path) -> None:
    graph = onnx.load(str(int8_spec.with_suffix(".onnx"))).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ: int8 weights and activations
    with open(IMAGENET / "labels.csv", newline="") as f:
        truth = {r["filename"]: int(r["class_index"]) for r in csv.DictReader(f)}

    def top1(clf: Classifier) -> float:
        preds = clf.predict([p.read_bytes() for p in HELD_OUT])
        return (
            100 * sum(pr.top[0].index == truth[p.name] for p, pr in zip(HELD_OUT, preds, strict=True)) / len(HELD_OUT)
        )

    fp32, int8 = top1(Classifier(resolve_model(None))), top1(Classifier(load_spec(int8_spec)))
    assert fp32 > 80 and int8 >= fp32 - 1.5, (fp32, int8)  # the bar: at most 1.5 points lost
    spec = load_spec(int8_spec)
    assert spec.quantized  # its spec says so: run as int8 whatever runs it
    on_openvino = Classifier(spec, runtime="openvino")
    assert on_openvino.choice.precision == "int8" and top1(on_openvino) >= fp32 - 1.5


def test_bench_measures_the_int8_model_on_both_runtimes(int8_spec: Path, tmp_path: Path) -> None:
    for p in HELD_OUT[:10]:
        (tmp_path / p.name).symlink_to(p)
    out = _iraas("bench", "model", str(tmp_path), "--runtimes", "all", "--int8", str(int8_spec))
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[:2]) for line in out.stdout.splitlines()}
    assert {("onnxruntime", "int8"), ("openvino", "int8"), ("onnxruntime", "fp32")} <= rows


def test_the_service_serves_the_int8_spec(int8_spec: Path, tmp_path: Path) -> None:
    svc = Service(tmp_path / "data", model=str(int8_spec), max_workers=1).start()
    try:
        photo = IMAGENET / "images" / "n01440764_tench.JPEG"
        r = httpx.post(svc.url + "/v1/recognitions", files={"files": (photo.name, photo.read_bytes())}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()[0]["label"] == "tench" and r.json()[0]["model"] == int8_spec.stem
    finally:
        svc.stop()


def test_quantize_refuses_what_cannot_work(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    none = _iraas("quantize", "--calibration", str(tmp_path / "empty"), "--out", str(tmp_path / "x.toml"))
    assert none.returncode == 2 and "no calibration images" in none.stderr
    faces = _iraas("quantize", "--model", "faces", "--calibration", str(tmp_path), "--out", str(tmp_path / "x.toml"))
    assert faces.returncode == 2 and "faces model is not one" in faces.stderr
    wrong = _iraas("quantize", "--calibration", str(PHOTOS[0]), "--out", str(tmp_path / "x.onnx"))
    assert wrong.returncode == 2 and "must name a .toml" in wrong.stderr
