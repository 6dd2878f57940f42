"""The HTTP API from Python, and nothing but the HTTP API (httpx): what any other program
could do, typed.

    with Client("http://127.0.0.1:8000", api_key=...) as iraas:
        for r in iraas.recognize(["cat.jpg", "dog.jpg"]):
            print(r.name, r.label, r.confidence)

Refusals that a later try may meet (429, 503 with Retry-After) are retried a few times;
every other refusal raises `IraasError` with the service's code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

Image = str | os.PathLike[str] | bytes  # a file's path, or an image's bytes
FINAL = ("done", "failed")


@dataclass(frozen=True)
class Recognition:
    """One image's answer, or where it is (`queued`, `running`) when not final yet."""

    id: str
    status: str
    name: str = ""  # not known to a status query of an image still queued
    label: str | None = None
    confidence: float | None = None
    top5: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # a failure's code: corrupt, expired, gave_up, …
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    request_id: str = ""
    callback: dict[str, Any] | None = None  # the webhook's delivery, when one was asked for
    cached: bool = False

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @classmethod
    def of(cls, body: dict[str, Any]) -> Recognition:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in body.items() if k in known})


class IraasError(Exception):
    """The service refused: `status` (HTTP), `code` (stable, e.g. too_large), `detail`."""

    def __init__(self, status: int, code: str, detail: str, request_id: str = "") -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.request_id = status, code, detail, request_id


class Client:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        batch: int = 32,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`timeout`: how long `recognize` waits for answers; `batch`: images per request."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.batch, self.retries = timeout, batch, retries
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout + 30, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the verbs --------------------------------------------------------------------------

    def recognize(
        self,
        images: Image | Sequence[Image],
        *,
        wait: bool = True,
        callback_url: str | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
    ) -> list[Recognition]:
        """Recognise `images`, in order. `wait`: until every answer is final or the client's
        `timeout` passed (those still not final say so); else as soon as they are queued."""
        batches = _chunks(_as_list(images), self.batch)
        started = time.monotonic()
        out: list[Recognition] = []
        for chunk in batches:
            left = max(self.timeout - (time.monotonic() - started), 0.0) if wait else 0.0
            out += self._post(chunk, wait, left, callback_url, deadline_s, request_id)
        if wait and not all(r.final for r in out):
            out = self.wait_all(out, timeout=max(self.timeout - (time.monotonic() - started), 0.0))
        return out

    def submit(self, images: Image | Sequence[Image], **options: Any) -> list[Recognition]:
        """Queue `images` and return at once (status `queued`, or final when answered from a
        stored result): `get` or `wait_all` later, or name a `callback_url`."""
        return self.recognize(images, wait=False, **options)

    def get(self, rid: str) -> Recognition:
        return Recognition.of(self._call("GET", f"/v1/recognitions/{rid}").json())

    def wait_all(self, items: Iterable[Recognition | str], timeout: float | None = None) -> list[Recognition]:
        """Each one's answer once final, in order, polling (every 0.1 s, up to 2 s apart); those
        not final within `timeout` (the client's, if None) are returned as they stand."""
        current = [r if isinstance(r, Recognition) else self.get(r) for r in items]
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        pause = 0.1
        while not all(r.final for r in current) and time.monotonic() < deadline:
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            current = [r if r.final else _named(self.get(r.id), r.name) for r in current]
            pause = min(pause * 1.5, 2.0)
        return current

    # -- HTTP -------------------------------------------------------------------------------

    def _post(
        self,
        images: list[Image],
        wait: bool,
        timeout: float,
        callback_url: str | None,
        deadline_s: float | None,
        request_id: str | None,
    ) -> list[Recognition]:
        files = [("files", (_name(image, i), _bytes(image))) for i, image in enumerate(images, 1)]
        data = {k: str(v) for k, v in (("callback_url", callback_url), ("deadline_s", deadline_s)) if v is not None}
        params = {"wait": str(wait).lower(), "timeout": f"{timeout:.3f}"}
        headers = {"X-Request-ID": request_id} if request_id else {}
        response = self._call("POST", "/v1/recognitions", params=params, files=files, data=data, headers=headers)
        return [Recognition.of(item) for item in response.json()]

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response = self._http.request(method, path, **kwargs)
            if response.status_code < 400:
                return response
            retry_after = response.headers.get("retry-after", "")
            if response.status_code in (429, 503) and retry_after.isdigit() and attempt < self.retries:
                time.sleep(min(int(retry_after), 30))
                continue
            break
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        raise IraasError(
            response.status_code,
            str(body.get("error", f"http_{response.status_code}")),
            str(body.get("detail", response.text[:200])),
            str(body.get("request_id", "")),
        )


def _named(r: Recognition, name: str) -> Recognition:
    return r if r.name or not name else replace(r, name=name)


def _as_list(images: Image | Sequence[Image]) -> list[Image]:
    if isinstance(images, str | bytes | os.PathLike):
        return [images]
    return list(images)


def _chunks(items: list[Image], n: int) -> list[list[Image]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def _name(image: Image, i: int) -> str:
    return f"image-{i}" if isinstance(image, bytes) else Path(image).name


def _bytes(image: Image) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()
