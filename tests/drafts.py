"""Requests as the web tier makes them (its intake fills in the input, dedup and version keys
through the results), for tests that queue work without a web process."""

from __future__ import annotations

from typing import Any

from iraas.messages import Request
from iraas.parts import Parts


def make_request(parts: Parts, *, rid: str, digest: str, **fields: Any) -> Request:
    return parts.results.request(Request(id=rid, input_key="", **fields), digest)
