"""The face gallery as the deployment stores it, for web processes and workers.

gallery/faces.npz, .version  the base gallery (from --gallery) and the gallery's version
gallery/enrolments/<id>.npz  each photo enrolled through the API: kept apart, so that a
                             restart or two enrolments at once lose none
gallery/removals/<h>.json    a person removed, and when: photos enrolled before then are
                             left out
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable

from ..blobs.base import BlobNotFound, BlobStore
from ..lifecycle.ids import issue_time
from ..messages import FACES
from ..model.gallery import GalleryParts

_GALLERY = "gallery/faces.npz"
_VERSION = "gallery/faces.version"
_ENROLMENTS = "gallery/enrolments/"
_REMOVALS = "gallery/removals/"


class GalleryStore:
    def __init__(self, blobs: BlobStore, clock: Callable[[], float] = time.time) -> None:
        self.blobs, self.clock = blobs, clock
        self._version_cache: tuple[float, str] | None = None  # (monotonic time read, version)

    def publish_gallery(self, data: bytes) -> None:
        """Store the base gallery (`--gallery`) for the workers; enrolments stay beside it."""
        self.blobs.put(_GALLERY, data)
        self._bump()

    def add_enrolment(self, rid: str, data: bytes) -> None:
        """One enrolled photo (a one-row gallery), kept under its request id: first write wins."""
        self.blobs.put(f"{_ENROLMENTS}{rid}.npz", data, if_absent=True)
        self._bump()

    def remove_person(self, name: str) -> None:
        """Leave out every photo of `name` enrolled until now, the base gallery's included; a
        later enrolment of the same name counts again."""
        record = json.dumps({"name": name, "at": self.clock()}).encode()
        self.blobs.put(f"{_REMOVALS}{hashlib.sha256(name.encode()).hexdigest()[:32]}.json", record)
        self._bump()

    def _bump(self) -> None:
        # Workers reload when the version changes; a lost race between two writers still
        # changes it, and a reload reads every part, whoever wrote the version.
        self.blobs.put(_VERSION, f"{time.time_ns()}-{secrets.token_hex(4)}".encode())
        self.gallery_changed()

    def gallery_changed(self) -> None:
        """Another process changed the gallery (a worker enrolled someone): read its version anew
        rather than answer from this process's cached one for up to a second."""
        self._version_cache = None

    def gallery_version(self) -> str:
        try:
            return self.blobs.get(_VERSION).decode()
        except BlobNotFound:
            return ""

    def model_version(self, model: str) -> str:
        """The part of a model's identity that changes while it serves: the face gallery's
        version. Cached for a second (enrolments reach answers within about that)."""
        if model != FACES:
            return ""
        now = time.monotonic()
        cached = self._version_cache
        if cached is None or now - cached[0] > 1.0:
            cached = (now, self.gallery_version() or "none")
            self._version_cache = cached
        return cached[1]

    def load_gallery(self) -> GalleryParts:
        """The base gallery, then every enrolment in the order they were issued, and removals."""
        parts = []
        # No exists() first: a get of a missing base is the same one trip.
        for key in [_GALLERY, *self.blobs.list(_ENROLMENTS)]:
            try:
                data = self.blobs.get(key)
            except BlobNotFound:
                continue
            # an enrolment's key is its request id, whose first 4 bytes are its issue time
            parts.append((0.0 if key == _GALLERY else issue_time(key[len(_ENROLMENTS) :]), data))
        removed: dict[str, float] = {}
        for key in self.blobs.list(_REMOVALS):
            with contextlib.suppress(BlobNotFound, ValueError, KeyError):
                entry = json.loads(self.blobs.get(key))
                removed[str(entry["name"])] = float(entry["at"])
        return GalleryParts(parts, removed)


def publish_if_given(model: str, path: str, store: GalleryStore) -> None:
    """Model "faces": enrol `path` (`--gallery`) and publish it before any worker starts; fails
    now, clearly, if there is no gallery at all."""
    from ..model.recognizer import BlobGallery, gallery_from_path

    if model != FACES:
        return
    if path:
        store.publish_gallery(gallery_from_path(path).to_bytes())  # type: ignore[attr-defined]
    BlobGallery(store)()
