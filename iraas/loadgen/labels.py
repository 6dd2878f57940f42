"""Expected labels in the three formats we meet, keyed by file name without extension."""

from __future__ import annotations

import csv
from pathlib import Path


def read_labels(path: str | Path) -> dict[str, str]:
    """The course face CSV (`Image,Results`), the course ImageNet CSV (`test_N.JPEG,label`, no
    header) and imagenet-sample's `labels.csv` (`filename,class_index,wnid,label`)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] == ["image", "results"]:
        return {Path(r[0]).stem: r[1] for r in rows[1:]}
    if "filename" in header and "label" in header:
        name, label = header.index("filename"), header.index("label")
        return {Path(r[name]).stem: r[label] for r in rows[1:]}
    if len(rows[0]) == 2:
        return {Path(r[0]).stem: r[1] for r in rows}
    raise ValueError(f"{path}: unknown label format (header {rows[0][:4]})")


def same_label(got: str, want: str) -> bool:
    return got.strip().lower() == want.strip().lower()
