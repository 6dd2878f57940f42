"""Where the model runs: onnxruntime (the fp32 reference) or OpenVINO, at fp32, bf16 or int8."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iraas.model.builtin import resolve_model
from iraas.model.classifier import Classifier
from iraas.model.compare import tensors
from iraas.model.runtime import Choice, choose, open_runtime
from iraas.model.spec import SpecError

from .conftest import IMAGENET

PHOTOS = sorted((IMAGENET / "images").iterdir())


@pytest.mark.parametrize(
    ("runtime", "precision", "quantized", "expected"),
    [
        ("", "", False, Choice("onnxruntime", "fp32")),  # the default: the exact reference
        ("", "", True, Choice("onnxruntime", "int8")),  # a quantized graph is int8
        ("openvino", "", False, Choice("openvino", "fp32")),
        ("openvino", "bf16", False, Choice("openvino", "bf16")),
        ("openvino", "", True, Choice("openvino", "int8")),
    ],
)
def test_choices(runtime: str, precision: str, quantized: bool, expected: Choice) -> None:
    assert choose(runtime, precision, quantized) == expected


@pytest.mark.parametrize(
    ("runtime", "precision", "quantized", "said"),
    [
        ("onnxruntime", "bf16", False, "bf16 is --runtime openvino's"),
        ("openvino", "int8", False, "int8 needs a quantized model: `iraas quantize`"),
        ("openvino", "fp32", True, "this model is quantized (int8)"),
        ("tensorrt", "", False, "runtime must be onnxruntime or openvino"),
        ("", "fp16", False, "precision must be fp32, bf16, int8"),
    ],
)
def test_what_cannot_work_is_refused_saying_why(runtime: str, precision: str, quantized: bool, said: str) -> None:
    with pytest.raises(SpecError, match=said.replace("(", r"\(").replace(")", r"\)")):
        choose(runtime, precision, quantized)


@pytest.fixture(scope="module")
def inputs() -> list[np.ndarray]:  # type: ignore[type-arg]
    return tensors(resolve_model(None), PHOTOS[:60])


def _top1(choice: Choice, inputs: list[np.ndarray]) -> tuple[list[int], np.ndarray]:  # type: ignore[type-arg]
    runtime = open_runtime(resolve_model(None).onnx_path, choice)
    logits = np.concatenate([runtime.run(x) for x in inputs])
    return [int(i) for i in logits.argmax(1)], logits


def test_openvino_fp32_answers_as_the_reference_does(inputs: list[np.ndarray]) -> None:  # type: ignore[type-arg]
    ref, ref_logits = _top1(Choice(), inputs)
    ov, ov_logits = _top1(Choice("openvino", "fp32"), inputs)
    assert ov == ref
    assert float(np.abs(ov_logits - ref_logits).max()) < 1e-2  # the same arithmetic, another order


def test_bf16_where_the_cpu_computes_it_keeps_the_answers(inputs: list[np.ndarray]) -> None:  # type: ignore[type-arg]
    import openvino as ov

    offered = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    assert "BF16" in offered, f"this test needs a CPU with native bf16 (this one offers {offered})"
    ref, _ = _top1(Choice(), inputs)
    bf16, _ = _top1(Choice("openvino", "bf16"), inputs)
    assert sum(a == b for a, b in zip(ref, bf16, strict=True)) >= len(ref) - 2


def test_bf16_on_a_cpu_without_it_is_refused_naming_what_it_has() -> None:
    spec = resolve_model(None)
    with pytest.raises(SpecError, match=r"natively \(AVX-512 BF16 or AMX\); this one offers FP32, INT8: use fp32"):
        Classifier(spec, runtime="openvino", precision="bf16", capabilities=lambda: ["FP32", "INT8"])


def test_without_openvino_installed_the_runtime_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: its import fails
    with pytest.raises(SpecError, match=r"pip install 'iraas\[openvino\]'"):
        Classifier(resolve_model(None), runtime="openvino")


def test_a_worker_on_openvino_bf16_recognises_a_photo() -> None:
    clf = Classifier(resolve_model(None), runtime="openvino", precision="bf16")
    (pred,) = clf.predict([(IMAGENET / "images" / "n01440764_tench.JPEG").read_bytes()])
    assert pred.top[0].label == "tench"


def test_bench_compares_every_runtime_and_recommends_one(tmp_path: Path) -> None:
    for f in PHOTOS[:12]:
        (tmp_path / f.name).symlink_to(f)
    out = subprocess.run(
        [sys.executable, "-m", "iraas.cli", "bench", "model", str(tmp_path), "--runtimes", "all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[:2]) for line in out.stdout.splitlines()}
    assert {("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")} <= rows
    assert "(12 images, inference only, one at a time)" in out.stdout
    assert "recommended here: " in out.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "iraas.cli", "bench", "model", str(tmp_path), "--runtimes", "tensorrt"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "not tensorrt" in wrong.stderr
