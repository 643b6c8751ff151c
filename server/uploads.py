"""The form of POST /v1/embed/files read straight from the body, for server.fastpath.

The same parser as FastAPI's form machinery (python-multipart), without what that machinery
adds per request: a SpooledTemporaryFile and an UploadFile per file, thread hops to write
and read them, the FormData, the dependency solving. Strict: only the exact form the route
documents (`files` parts with a file name, at most one `dim` of plain digits, at most one
known `encoding_format`) is read; anything else is None and goes to the route, which then
writes every refusal (and decides what to make of unusual forms) itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from server.schemas import MAX_DIM, EncodingFormat

FORMATS = {f.encode(): f for f in get_args(EncodingFormat)}
MAX_PARTS = 1000  # Starlette's max_files and max_fields: past them the route's parser refuses


@dataclass
class Upload:
    files: list[bytes] = field(default_factory=list)
    dim: int | None = None
    encoding_format: EncodingFormat = "float"


class Unusual(Exception):
    """A form the fast path leaves to the route."""


class _Reader:
    """python-multipart callbacks that keep the parts (a header block is small: joined once)."""

    def __init__(self):
        self.parts: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
        self.ended = False

    def callbacks(self):
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self):
        if len(self.parts) >= MAX_PARTS:
            raise Unusual
        self.headers, self.name, self.value, self.data = [], b"", b"", []

    def on_header_field(self, data, start, end):
        self.name += data[start:end]

    def on_header_value(self, data, start, end):
        self.value += data[start:end]

    def on_header_end(self):
        self.headers.append((self.name.lower(), self.value))
        self.name, self.value = b"", b""

    def on_part_data(self, data, start, end):
        self.data.append(data[start:end])

    def on_part_end(self):
        self.parts.append((self.headers, b"".join(self.data)))

    def on_end(self):
        self.ended = True


def read_upload(content_type: bytes, body: bytes) -> Upload | None:
    """The form, or None for anything but a complete, plain one."""
    media, params = parse_options_header(content_type)
    if media != b"multipart/form-data" or set(params) != {b"boundary"} or not params[b"boundary"]:
        return None
    reader = _Reader()
    try:
        parser = MultipartParser(params[b"boundary"], reader.callbacks())
        parser.write(body)
        parser.finalize()
        if not reader.ended:
            return None
        return _form(reader.parts)
    except (FormParserError, Unusual):
        return None


def _form(parts: list[tuple[list[tuple[bytes, bytes]], bytes]]) -> Upload | None:
    upload, seen = Upload(), set()
    for headers, data in parts:
        dispositions = [value for name, value in headers if name == b"content-disposition"]
        if len(dispositions) != 1:
            return None
        kind, options = parse_options_header(dispositions[0])
        name, filename = options.get(b"name"), options.get(b"filename")
        if kind != b"form-data" or set(options) - {b"name", b"filename"}:
            return None
        if name == b"files" and filename and data:
            upload.files.append(data)
            continue
        if filename is not None or name in seen:
            return None
        seen.add(name)
        if name == b"dim" and data.isdigit() and not data.startswith(b"0"):
            upload.dim = int(data)
            if upload.dim > MAX_DIM:
                return None
        elif name == b"encoding_format" and data in FORMATS:
            upload.encoding_format = FORMATS[data]
        else:
            return None
    return upload if upload.files else None
