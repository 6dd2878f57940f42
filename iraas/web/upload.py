"""Streaming multipart intake with limits enforced while the body arrives.

A file over the size limit, one file too many, or a body over the request limit ends the upload
at once with an error naming the file: the rest of the body is never read (nor buffered). Each
file is hashed as it arrives and kept in memory only up to a small threshold; past it, it is
spooled to an anonymous temporary file, so that twenty clients sending the largest request
each cost disk, not RAM.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from ..refusals import InputError

_MAX_PART_HEADERS = 16 * 1024
MAX_TEXT_BYTES = 4096  # a form field that is not a file (callback_url, deadline_s)
TEXT_FIELDS = ("callback_url", "deadline_s")


class Spool:
    """One upload's bytes, hashed as they arrive: in memory up to `threshold`, then in an
    anonymous temporary file. (Not the stdlib's SpooledTemporaryFile: its every read and write
    goes through a Python method, and the image checks read the header in dozens of pieces.)"""

    def __init__(self, threshold: int) -> None:
        self.size = 0
        self._sha = hashlib.sha256()
        self._threshold = threshold
        self._memory: io.BytesIO | None = io.BytesIO()  # None once on disk
        self._file: IO[bytes] = self._memory

    @classmethod
    def of(cls, data: bytes, threshold: int = 1 << 20) -> Spool:
        spool = cls(threshold)
        spool.write(data)
        return spool

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._sha.update(chunk)
        if self._memory is not None and self.size > self._threshold:
            disk = tempfile.TemporaryFile(prefix="iraas-upload-")  # noqa: SIM115 (closed by close())
            disk.write(self._memory.getvalue())
            self._memory.close()
            self._file, self._memory = disk, None
        self._file.write(chunk)

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()

    def reader(self) -> IO[bytes]:
        """The bytes from the start (one reader at a time; no copy)."""
        self._file.seek(0)
        return self._file

    def head(self, n: int) -> bytes:
        return self.reader().read(n)

    def tail(self, n: int) -> bytes:
        self._file.seek(max(self.size - n, 0))
        return self._file.read()

    def close(self) -> None:
        self._file.close()


@dataclass
class Upload:
    field: str
    name: str
    body: Spool


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_files: int
    max_request_bytes: int
    spool_bytes: int
    read_timeout_s: float  # the longest wait for the next piece of the body


class _Collector:
    def __init__(self, fields: tuple[str, ...], limits: UploadLimits) -> None:
        self.fields, self.limits = fields, limits
        self.files: list[Upload] = []
        self.values: dict[str, str] = {}  # the form fields in TEXT_FIELDS
        self._text: tuple[str, bytearray] | None = None
        self._current: Upload | None = None
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hvalue = b""
        self._header_bytes = 0

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]
        self._count_header(end - start)

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]
        self._count_header(end - start)

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > _MAX_PART_HEADERS:
            raise InputError(431, "headers_too_large", f"a part's headers are over {_MAX_PART_HEADERS} bytes")

    def header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname = self._hvalue = b""

    def headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers, self._header_bytes = {}, 0
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._current = self._text = None
        if name in TEXT_FIELDS and filename is None:
            self._text = (name, bytearray())
        if name in self.fields and filename is not None:
            if len(self.files) >= self.limits.max_files:
                raise InputError(413, "too_many_files", f"at most {self.limits.max_files} files per request")
            shown = filename.decode("utf-8", "replace") or "upload"
            self._current = Upload(name, shown, Spool(self.limits.spool_bytes))
            self.files.append(self._current)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        cur = self._current
        if self._text is not None:
            name, value = self._text
            value += data[start:end]
            if len(value) > MAX_TEXT_BYTES:
                raise InputError(413, "field_too_large", f"form field {name} is over {MAX_TEXT_BYTES} bytes")
            self.values[name] = value.decode("utf-8", "replace")
        if cur is None:
            return  # other form fields are ignored
        cur.body.write(data[start:end])
        if cur.body.size > self.limits.max_file_bytes:
            raise InputError(413, "too_large", f"file is over the {self.limits.max_file_bytes} byte limit", cur.name)

    def close(self) -> None:
        for f in self.files:
            f.body.close()


async def capped(body: AsyncIterator[bytes], limit: int, read_timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks, refused past `limit` bytes in all (a chunked body declares no
    length) or when the client stalls for `read_timeout_s`."""
    total = 0
    it = body.__aiter__()
    while True:
        try:
            # asyncio.timeout, not wait_for: no task made for each of the body's chunks
            async with asyncio.timeout(read_timeout_s):
                chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise InputError(408, "body_timeout", f"no part of the body arrived for {read_timeout_s:g} s") from None
        total += len(chunk)
        if total > limit:
            raise InputError(413, "request_too_large", f"the request body is over the {limit} byte limit")
        yield chunk


async def read_multipart(
    content_type: str, body: AsyncIterator[bytes], fields: tuple[str, ...], limits: UploadLimits
) -> tuple[list[Upload], dict[str, str]]:
    """The files in `fields`, and the values of the TEXT_FIELDS sent; the caller closes the
    files' spools."""
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InputError(415, "bad_content_type", "send multipart/form-data with the image file(s)")
    c = _Collector(fields, limits)
    parser = MultipartParser(
        boundary,
        {
            "on_header_field": c.header_field,
            "on_header_value": c.header_value,
            "on_header_end": c.header_end,
            "on_headers_finished": c.headers_finished,
            "on_part_data": c.part_data,
        },
    )
    try:
        async for chunk in capped(body, limits.max_request_bytes, limits.read_timeout_s):
            try:
                parser.write(chunk)
            except InputError:
                raise
            except Exception as exc:  # the parser's own errors: a malformed body
                raise InputError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
        try:
            parser.finalize()
        except Exception as exc:
            raise InputError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
        if parser.state != MultipartState.END:  # cut short: its last file may be cut short too
            raise InputError(400, "bad_multipart", "the multipart body ends before its closing boundary")
    except BaseException:
        c.close()
        raise
    if not c.files:
        raise InputError(400, "missing_field", f"no file in form field {' or '.join(repr(f) for f in fields)}")
    return c.files, c.values
