"""A request refused: status, stable code, a reason people can read, the file. Raised by the web
tier and by the URL policy (intake and webhook delivery share it); answered as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .imaging import ImageError

# ImageError codes → HTTP status
IMAGE_STATUS = {
    "too_many_pixels": 422,
    "truncated": 422,
    "corrupt": 422,
    "empty": 400,
    "not_an_image": 415,
    "unsupported_format": 415,
}


class InputError(Exception):
    """A request refused: `status`, a stable `code`, a `reason`; `retry_after` seconds for a
    refusal that a later try may not meet (overload, storage unavailable)."""

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        file: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.file = status, code, reason, file
        self.retry_after, self._headers = retry_after, headers or {}

    @property
    def headers(self) -> dict[str, str]:
        retry = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return self._headers | retry

    @classmethod
    def from_image(cls, err: ImageError, file: str) -> InputError:
        return cls(IMAGE_STATUS.get(err.code, 422), err.code, err.reason, file)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "detail": self.reason}
        if self.file is not None:
            out["file"] = self.file
        return out
