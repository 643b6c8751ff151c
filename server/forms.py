"""Multipart forms (POST /v1/embed/files, /v1/search/files) held to one reading.

python-multipart, under FastAPI's form machinery, refuses a preamble before the first
boundary (RFC 2046 says to ignore it) and, when the closing boundary is missing, keeps the
parts it finished and drops the rest without a word; FastAPI then takes the last of a
repeated field and ignores unknown ones. So a cut upload could be embedded in part, and a
typo in a field name silently meant the default. Here a form is framed first (preamble and
epilogue dropped, a missing closing boundary refused) for the fast path and the routes
alike, and each route names the fields it reads: any other, or a field other than `files`
given twice, is refused with the list of what is allowed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from fastapi import Depends, Request
from python_multipart.multipart import parse_options_header

from server.errors import BadInput, MalformedBody
from server.middleware import read_body, replay, send_json

REPEATABLE = "files"


def framed(content_type: bytes, body: bytes) -> bytes:
    """The body from its first boundary to its closing one; MalformedBody if either is missing.

    Delimiters are `--boundary` at the start of a line; the closing one ends in `--`.
    """
    media, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        return body
    delimiter = b"--" + boundary
    shown = delimiter.decode(errors="replace")
    if body.startswith(delimiter):
        start = 0
    else:
        start = body.find(b"\r\n" + delimiter) + 2
        if start < 2:
            raise MalformedBody(
                f"the multipart body has no part: no line starts with its boundary {shown!r}"
            )
    closing = delimiter + b"--"
    if body.startswith(closing, start):
        end = start + len(closing)
    else:
        end = body.rfind(b"\r\n" + closing, start) + 2 + len(closing)
        if end < 2 + len(closing):
            raise MalformedBody(
                f"the multipart body ends without its closing boundary '{shown}--': the upload "
                "may have been cut; send the whole form"
            )
    return body[start:end] + b"\r\n"


class FormFraming:
    """Pure ASGI: multipart bodies reach the fast path and the routes framed (`framed`)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if not content_type.lower().startswith(b"multipart/"):
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return
        try:
            body = framed(content_type, body)
        except MalformedBody as e:
            return await send_json(send, e.status, {"error": e.code, "detail": e.message})
        await self.app(scope, replay(body, receive), send)


def form_fields(allowed: Iterable[str]):
    """A dependency: the route's form holds only `allowed` fields, each once but `files`."""
    allowed = tuple(allowed)

    async def check(request: Request) -> None:
        form = await request.form()  # FastAPI's own parse, cached on the request
        counts = Counter(name for name, _ in form.multi_items())
        unknown = sorted(set(counts) - set(allowed))
        if unknown:
            raise BadInput(
                f"form field {unknown[0]!r} is not one this route reads; allowed: "
                f"{', '.join(allowed)}"
            )
        repeated = sorted(n for n, c in counts.items() if c > 1 and n != REPEATABLE)
        if repeated:
            raise BadInput(
                f"form field {repeated[0]!r} is given {counts[repeated[0]]} times; send it once "
                f"(only `{REPEATABLE}` repeats, one part per image)"
            )

    return Depends(check)
