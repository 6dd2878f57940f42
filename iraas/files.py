"""Image files on disk, as the commands and clients take them (no numpy, no Pillow: `iraas
recognize`, a client, must not load the model's libraries to list a folder)."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, and the image files of folders (sorted, not recursive into hidden)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        else:
            out.append(p)
    return out
