"""Streaming multipart intake with limits enforced while the body arrives.

A file over the size limit, or one file too many, ends the upload at once with an error naming
the file: the rest of the body is never read (nor buffered).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import InputError


@dataclass
class Upload:
    field: str
    name: str
    data: bytearray = dataclasses.field(default_factory=bytearray)


class _Collector:
    def __init__(self, fields: tuple[str, ...], max_file_bytes: int, max_files: int) -> None:
        self.fields, self.max_file_bytes, self.max_files = fields, max_file_bytes, max_files
        self.files: list[Upload] = []
        self._current: Upload | None = None
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hvalue = b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname = self._hvalue = b""

    def headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers = {}
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._current = None
        if name in self.fields and filename is not None:
            if len(self.files) >= self.max_files:
                raise InputError(413, "too_many_files", f"at most {self.max_files} files per request")
            self._current = Upload(name, filename.decode("utf-8", "replace") or "upload")
            self.files.append(self._current)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        cur = self._current
        if cur is None:
            return  # other form fields are ignored
        cur.data += data[start:end]
        if len(cur.data) > self.max_file_bytes:
            raise InputError(413, "too_large", f"file is over the {self.max_file_bytes} byte limit", cur.name)


async def read_multipart(
    content_type: str, body: AsyncIterator[bytes], fields: tuple[str, ...], max_file_bytes: int, max_files: int
) -> list[Upload]:
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise InputError(415, "bad_content_type", "send multipart/form-data with the image file(s)")
    c = _Collector(fields, max_file_bytes, max_files)
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
    async for chunk in body:
        try:
            parser.write(chunk)
        except InputError:
            raise
        except Exception as exc:  # the parser's own errors: a malformed body
            raise InputError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    parser.finalize()
    if not c.files:
        raise InputError(400, "missing_field", f"no file in form field {' or '.join(repr(f) for f in fields)}")
    return c.files
