"""Safe, fast image decoding shared by the web tier and the workers.

Formats are recognised by content only, from an allow-list; the pixel count is checked from
the header before any pixel is decoded; truncated files are errors, never partial images;
large JPEGs are decoded at a reduced DCT scale when the model needs far fewer pixels.
Every failure is an `ImageError` whose `reason` a user can read.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import IO

import numpy as np
import simplejpeg  # type: ignore[import-untyped]
from PIL import Image, ImageOps, UnidentifiedImageError, features

# Every image's size is checked against the deployment's own limits (`ImageLimits`, settings)
# from its header, before any pixel is decoded. Pillow's process-wide check (a warning past
# ~89 M pixels, an error past ~179 M) would refuse images within an operator's higher
# `max_pixels`, and making its warning an error needs `warnings.catch_warnings`, which swaps a
# process-wide filter list: not safe from the web tier's many threads.
Image.MAX_IMAGE_PIXELS = None

# Formats Pillow may try. Everything else (EPS runs Ghostscript, FITS, PSD, ...) is refused.
_BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
ALLOWED_FORMATS: tuple[str, ...] = _BASE_FORMATS + (("AVIF",) if features.check("avif") else ())
# File names a folder scan treats as images (decoding still goes by content).


class ImageError(ValueError):
    """An image that cannot be used. `code` is stable for machines, `reason` is for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @classmethod
    def unexpected(cls, what: str, exc: BaseException, code: str = "corrupt") -> ImageError:
        """An exception nobody foresaw, as this one image's failure: what failed, and how."""
        return cls(code, f"{what}: {type(exc).__name__}: {exc}"[:300])


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be, checked from its header before any pixel is decoded (a detector
    sized to a 5,000,000 x 10 strip asks for tens of GB)."""

    max_pixels: int = 50_000_000
    max_side: int = 20_000
    max_aspect: float = 20.0  # long side / short side

    def check(self, w: int, h: int) -> None:
        if w <= 0 or h <= 0:
            raise ImageError("corrupt", "image has no pixels")
        if w * h > self.max_pixels:
            raise ImageError("too_many_pixels", f"image is {w}x{h}, more than {self.max_pixels} pixels")
        if max(w, h) > self.max_side:
            raise ImageError("too_many_pixels", f"image is {w}x{h}, a side is over {self.max_side} pixels")
        if max(w, h) > self.max_aspect * min(w, h):
            raise ImageError("bad_shape", f"image is {w}x{h}, more than {self.max_aspect:g} times as long as wide")


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def _detect_other(data: bytes) -> str | None:
    """Name a refused format we can recognise, for a clearer error."""
    head = data[:64].lstrip().lower()
    if head.startswith((b"%!ps", b"\xc5\xd0\xd3\xc6")):
        return "EPS/PostScript"
    if head.startswith(b"simple  ="):
        return "FITS"
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "HTML/XML text"
    if head.startswith(b"%pdf"):
        return "PDF"
    return None


def _open(data: bytes | IO[bytes], limits: ImageLimits) -> Image.Image:
    """Only the header is read (a file is read from its current position)."""
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    head = f.read(64)
    if not head:
        raise ImageError("empty", "the file is empty")
    f.seek(-len(head), io.SEEK_CUR)
    try:
        img = Image.open(f, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        other = _detect_other(head)
        if other:
            raise ImageError("unsupported_format", f"{other} is not an accepted image format") from None
        raise ImageError(
            "not_an_image", "not a recognised image (accepted: " + ", ".join(ALLOWED_FORMATS) + ")"
        ) from None
    except Exception as exc:  # Pillow plugins raise assorted errors on corrupt headers
        raise ImageError("corrupt", f"corrupt image header: {exc}") from None
    limits.check(*img.size)
    return img


def inspect(data: bytes | IO[bytes], limits: ImageLimits = DEFAULT_LIMITS) -> ImageInfo:
    """Cheap check from the header only: format allowed, size and shape within the limits."""
    size = _jpeg_size(data)
    if size is not None:
        limits.check(*size)
        return ImageInfo("JPEG", *size)
    img = _open(data, limits)
    return ImageInfo(str(img.format), img.width, img.height)


_JPEG_HEAD = 64 * 1024  # a JPEG's frame header comes within this but for rare long metadata


def _jpeg_size(data: bytes | IO[bytes]) -> tuple[int, int] | None:
    """A JPEG's width and height, read by libjpeg-turbo from its first bytes (`inspect` takes
    ~12 µs so, ~60 through Pillow's parser in Python; the web tier inspects every upload). None
    for any other file, or a JPEG it cannot read so: Pillow then decides, and names what is
    wrong."""
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    start = f.tell()
    try:
        if f.read(3) != b"\xff\xd8\xff":  # not a JPEG: nothing more read
            return None
        f.seek(start)
        height, width, _, _ = simplejpeg.decode_jpeg_header(f.read(_JPEG_HEAD))
    except ValueError:
        return None
    finally:
        f.seek(start)
    return int(width), int(height)


def _draft_request(size: tuple[int, int], min_side: int | None) -> tuple[int, int] | None:
    """The size to ask of libjpeg's DCT scaling (the short side `min_side`), None when no
    reduction is possible (under half the original)."""
    w, h = size
    scale = min_side / min(w, h) if min_side else 1.0
    return (math.ceil(w * scale), math.ceil(h * scale)) if scale < 0.5 else None


def _draft_factor(size: tuple[int, int], min_side: int | None) -> int:
    """1, 2, 4 or 8: the reduction Pillow's `draft` picks for that request (so both decoders
    give the same pixels)."""
    want = _draft_request(size, min_side)
    if want is None:
        return 1
    fit = min(size[0] // want[0], size[1] // want[1])
    return next(a for a in (8, 4, 2, 1) if fit >= a)


def _draft(img: Image.Image, min_side: int | None) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the short side stays >= min_side."""
    want = _draft_request(img.size, min_side) if img.format == "JPEG" else None
    if want is not None:
        img.draft("RGB", want)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_to_rgb(img)
    if (mode == "P" and "transparency" in img.info) or mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale: scale into 0..255 instead of clipping at 255."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        arr = arr * (255.0 / top)
    elif img.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def decode(data: bytes, min_side: int | None = None, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode to an upright RGB image. With `min_side`, a JPEG may come back smaller, but its
    short side is never below `min_side` (unless the original's already was)."""
    img = _open(data, limits)
    if img.format == "JPEG":
        fast = _decode_jpeg(data, img, min_side)
        if fast is not None:
            return fast
    _draft(img, min_side)
    try:
        img.load()  # the first frame only, for animated GIF/WebP
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text:
            raise ImageError("truncated", "the image file is truncated") from None
        raise ImageError("corrupt", f"cannot decode image: {text}") from None
    except MemoryError:
        raise ImageError("too_many_pixels", "the image needs more memory than the worker has") from None
    except Exception as exc:  # decoder plugins raise anything (AVIF: RuntimeError): one bad file
        raise ImageError.unexpected("cannot decode image", exc) from None


# EXIF orientation → the transpose that makes the picture upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode_jpeg(data: bytes, header: Image.Image, min_side: int | None) -> Image.Image | None:
    """A JPEG through libjpeg-turbo's strict mode (simplejpeg), decoded once. Strict, because
    libjpeg fills absent or unreadable scan data with grey and only warns (on stderr, which
    Pillow never reads): a file with intact headers and no picture would be answered as a grey
    picture. The same library and settings as Pillow's decoder (accurate DCT, fancy
    upsampling, the same DCT scale): the same pixels, in half the time of checking with one
    decoder and decoding with the other. None: a JPEG it cannot give as RGB (CMYK, 12-bit),
    which Pillow decodes."""
    k = _draft_factor(header.size, min_side)
    w, h = math.ceil(header.width / k), math.ceil(header.height / k)
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_height=h, min_width=w)
    except ValueError as exc:
        text = str(exc)
        if text.startswith("Premature end of JPEG file"):
            raise ImageError("truncated", "the image file is truncated") from None
        if text.startswith(("Corrupt JPEG data", "Bogus", "Invalid", "Huffman", "Not a JPEG")):
            raise ImageError("corrupt", f"damaged picture data: {text}"[:300]) from None
        return None  # anything else (a colour space simplejpeg does not convert): Pillow decides
    img = Image.fromarray(rgb)
    turn = _UPRIGHT.get(header.getexif().get(0x0112, 1))
    return img.transpose(turn) if turn is not None else img


def looks_complete(head: bytes, tail: bytes, size: int, fmt: str) -> bool:
    """Cheap end-of-file check for the web tier from the file's first and last bytes, so that a
    truncated upload is refused before it is queued (a full decode there would cost as much as
    the worker's)."""
    tail = tail[-4096:].rstrip(b"\x00\r\n ")
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND" in tail[-16:]
    if fmt == "GIF":
        return tail.endswith(b";")
    if fmt == "WEBP":
        return len(head) >= 8 and int.from_bytes(head[4:8], "little") + 8 <= size
    if fmt == "BMP":  # the file header states the file's size
        return len(head) >= 6 and int.from_bytes(head[2:6], "little") <= size
    return True  # others: the worker's full decode reports truncation as a failed result
