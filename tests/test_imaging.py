"""Decoding: formats by content, modes to correct RGB, bad inputs as typed errors."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from iraas.imaging import ImageError, ImageInfo, ImageLimits, decode, inspect

from .conftest import IMAGENET
from .images import encode, png_bomb

A_JPEG = (IMAGENET / "images" / "n01440764_tench.JPEG").read_bytes()


def _error(data: bytes) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode(data)
    assert info.value.reason  # always something a user can read
    return info.value


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (random.Random(7).randbytes(4096), "not_an_image"),
        (b"<!DOCTYPE html><html><body>not a photo</body></html>", "unsupported_format"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "unsupported_format"),
        (A_JPEG[: len(A_JPEG) // 2], "truncated"),
    ],
    ids=["empty", "random-bytes", "html-named-jpg", "eps", "truncated-jpeg"],
)
def test_bad_inputs_give_typed_errors(data: bytes, code: str) -> None:
    assert _error(data).code == code


def test_eps_is_refused_by_name() -> None:
    # Pillow can open EPS (through Ghostscript); the allow-list must keep it out.
    assert "EPS" in _error(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n").reason


def test_png_bomb_fails_fast_from_the_header() -> None:
    bomb = png_bomb()
    assert len(bomb) < 100_000
    err = _error(bomb)
    assert err.code == "too_many_pixels"
    with pytest.raises(ImageError):
        inspect(bomb)


def test_pixel_limit_is_a_parameter() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode(data, limits=ImageLimits(max_pixels=10_000)).size == (100, 100)
    with pytest.raises(ImageError) as info:
        decode(data, limits=ImageLimits(max_pixels=9_999))
    assert info.value.code == "too_many_pixels"


def _with_comments(jpeg: bytes, n: int) -> bytes:
    """`jpeg` with `n` comment segments of 60 KiB after its start: its frame header moves back."""
    comment = b"\xff\xfe" + (60 * 1024 + 2).to_bytes(2, "big") + b"x" * 60 * 1024
    return jpeg[:2] + comment * n + jpeg[2:]


@pytest.mark.parametrize("comments", [0, 2])  # the frame header within the first 64 KiB, and past it
def test_a_jpegs_header_reads_as_pillow_reads_it(comments: int) -> None:
    for path in sorted((IMAGENET / "images").glob("*.JPEG"))[:20]:
        data = _with_comments(path.read_bytes(), comments)
        with Image.open(io.BytesIO(data)) as img:
            assert inspect(data) == ImageInfo("JPEG", img.width, img.height)
        assert inspect(io.BytesIO(data)) == inspect(data)
    with pytest.raises(ImageError) as info:  # a start and no frame: Pillow's answer, as before
        inspect(A_JPEG[:2] + b"\xff\xdb" + bytes(40))
    assert info.value.code == "not_an_image"


# Pillow's own default limit warns past 89,478,485 pixels and refuses past twice that.
@pytest.mark.parametrize("side", [9_500, 14_000])
def test_an_operators_higher_pixel_limit_is_the_limit(side: int) -> None:
    roomy = ImageLimits(max_pixels=200_000_000, max_side=20_000)
    info = inspect(png_bomb(side), roomy)
    assert (info.format, info.width, info.height) == ("PNG", side, side)
    with pytest.raises(ImageError) as refused:
        inspect(png_bomb(side), ImageLimits(max_pixels=side * side - 1, max_side=20_000))
    assert refused.value.reason == f"image is {side}x{side}, more than {side * side - 1} pixels"


def test_format_comes_from_content_not_name() -> None:
    png = encode(Image.new("RGB", (10, 10), (0, 255, 0)), "PNG")
    assert inspect(png).format == "PNG"  # whatever the client called it
    assert decode(png).getpixel((5, 5)) == (0, 255, 0)


def test_16bit_grayscale_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 40000, dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    r, g, b = decode(data).getpixel((0, 0))
    assert r == g == b == round(40000 * 255 / 65535)


def test_cmyk_jpeg_becomes_correct_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    r, g, b = decode(data).getpixel((8, 8))
    assert r > 220 and g < 40 and b < 40  # pure red, not inverted


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 255))
    out = decode(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)


def test_palette_with_transparency_and_la() -> None:
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 255, 0, 0])
    p.info["transparency"] = 0
    assert decode(encode(p, "PNG", transparency=0)).getpixel((1, 1)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 255))
    assert decode(encode(la, "PNG")).getpixel((1, 1)) == (0, 0, 0)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer must rotate 90° clockwise: the left edge goes to the top
    out = decode(encode(img, "JPEG", exif=exif, quality=95))
    assert out.size == (100, 200)
    top, bottom = out.getpixel((50, 20)), out.getpixel((50, 180))
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert decode(data).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_decode(fmt: str) -> None:
    data = encode(Image.new("RGB", (32, 24), (10, 200, 30)), fmt)
    out = decode(data)
    assert out.size == (32, 24) and out.mode == "RGB"


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8))
    data = encode(big, "JPEG", quality=85)
    full = decode(data)
    small = decode(data, min_side=256)
    assert full.size == (4000, 3000)
    assert 256 <= min(small.size) < 3000 / 4  # 1/8 scale: 500x375
    assert small.size == (500, 375)


def _pillow_decode(data: bytes, min_side: int | None) -> np.ndarray:  # type: ignore[type-arg]
    """Pillow alone (draft, load, exif_transpose, RGB): what decode must equal pixel for pixel."""
    img = Image.open(io.BytesIO(data))
    if min_side and min_side / min(img.size) < 0.5:
        scale = min_side / min(img.size)
        img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


@pytest.mark.parametrize("min_side", [None, 256, 112])
def test_jpegs_decode_to_pillows_pixels(min_side: int | None) -> None:
    # one decoder (libjpeg-turbo, strict) instead of a strict check plus Pillow: the same pixels
    for path in sorted((IMAGENET / "images").iterdir())[::5]:
        data = path.read_bytes()
        assert np.array_equal(np.asarray(decode(data, min_side)), _pillow_decode(data, min_side)), path.name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_as_pillow_turns_it(orientation: int) -> None:
    img = Image.fromarray(np.random.default_rng(orientation).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", exif=exif, quality=95)
    out = np.asarray(decode(data))
    assert out.shape == ((48, 64, 3) if orientation < 5 else (64, 48, 3))
    assert np.array_equal(out, _pillow_decode(data, None))


def test_grayscale_jpeg_decodes_to_pillows_rgb() -> None:
    gray = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 50), dtype=np.uint8), "L")
    data = encode(gray, "JPEG", quality=90)
    out = decode(data)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), _pillow_decode(data, None))
