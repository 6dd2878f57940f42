"""Pick the recognizer a deployment runs: an image classifier, or faces against a gallery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..imaging import DEFAULT_LIMITS, ImageError, ImageLimits
from ..messages import FACES
from .classifier import Classifier, Prediction, StageTimes
from .spec import SpecError

if TYPE_CHECKING:
    from .gallery import GalleryParts


def faces_module() -> Any:
    """The face recognizer, with a clear error when its extra is not installed."""
    try:
        from . import faces
    except ModuleNotFoundError as exc:
        raise SpecError(f"the faces model needs: pip install 'iraas[faces]' ({exc.name} is missing)") from None
    return faces


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Recognizer(Protocol):
    """What a worker runs. `name` is the model's name in messages and keys; `version` is the
    part of its identity that changes while it serves (the face gallery's version; "" for a
    fixed model): an answer is remembered for the same bytes only under the same version."""

    times: StageTimes

    @property
    def spec(self) -> _Named: ...

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def refresh(self) -> None:
        """Re-read what changes while serving (the gallery) before the next answer: a request
        named a newer version than this one answers with."""
        ...

    def enroll(self, person: str, image: bytes, source: str) -> tuple[bytes, str | None]:
        """Faces: `image` as a one-row gallery of `person`, and a problem worth reporting.
        Raises ImageError for an unreadable image, SpecError for a model with no gallery."""
        ...

    def classify(self, images: Sequence[bytes], top_k: int = 5) -> list[Prediction | ImageError]: ...


def load_recognizer(
    model: str | None,
    *,
    threads: int = 1,
    limits: ImageLimits = DEFAULT_LIMITS,
    gallery: Callable[[], object] | None = None,
    threshold: float = 0.0,
    runtime: str = "",
    precision: str = "",
    idle_threads: int = 0,
) -> Recognizer:
    """`runtime`, `precision`: "" for the model's own (iraas/model/runtime.py). `idle_threads`:
    a classifier's threads for an image while that many cores are free (iraas/model/cores.py;
    the faces model runs on `threads`)."""
    if model == FACES:
        if gallery is None:
            raise SpecError("the faces model needs a gallery (--gallery DIR or FILE)")
        if precision and not runtime:
            raise SpecError("the faces model runs on OpenCV's DNN engine in fp32: a precision needs --runtime")
        f = faces_module()
        embedder = f.FaceEmbedder(threads, runtime, precision)
        return f.FaceRecognizer(embedder, gallery, threshold, limits)  # type: ignore[no-any-return]
    from .builtin import resolve_model

    return Classifier(
        resolve_model(model),
        threads=threads,
        limits=limits,
        runtime=runtime,
        precision=precision,
        idle_threads=idle_threads,
    )


def gallery_from_path(path: str | Path) -> object:
    """A gallery file, or a folder per person (enrolled now, incrementally into FOLDER/gallery.npz)."""
    f = faces_module()
    path = Path(path)
    if path.is_dir():
        gallery, _, _ = f.enroll_folder(path)
    elif path.is_file():
        gallery = f.Gallery.from_bytes(path.read_bytes())
    else:
        raise SpecError(f"gallery {path} not found")
    if not gallery.names:
        raise SpecError(f"the gallery {path} is empty: put photos in {path}/<person name>/")
    return gallery


class _GalleryStore(Protocol):
    def gallery_version(self) -> str: ...

    def load_gallery(self) -> GalleryParts: ...


class BlobGallery:
    """The published gallery, re-read when its version changes (checked every `every_s`)."""

    def __init__(self, store: _GalleryStore, every_s: float = 1.0) -> None:
        self.store, self.every_s = store, every_s
        self.version = ""  # of the gallery last returned
        self._gallery: object | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            self._checked = -1e9  # the next call reads the version, whenever it last did

    def __call__(self) -> object:
        Gallery = faces_module().Gallery

        with self._lock:
            now = time.monotonic()
            if self._gallery is not None and now - self._checked < self.every_s:
                return self._gallery
            self._checked = now
            version = self.store.gallery_version()
            if version and (version != self.version or self._gallery is None):
                parts = self.store.load_gallery()
                if parts.parts:
                    self._gallery, self.version = Gallery.merged(parts), version
            if self._gallery is None:
                raise SpecError("no gallery has been published: start with --gallery")
            return self._gallery
