"""The face gallery as it is stored: parts, each with when it was enrolled, and removals. Pure
data (no numpy), so that the store can hand it over without loading the face model's code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GalleryParts:
    """The gallery as stored: each part with when it was enrolled (the base gallery: 0), and
    each person removed with when; a row counts unless its person was removed after it."""

    parts: list[tuple[float, bytes]]
    removed: dict[str, float]
