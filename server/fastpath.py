"""POST /v1/embed and /v1/embed/files for well-formed requests, without FastAPI's
per-request machinery.

Under load the event loop spends ~250 us per embed request, ~120 us of it in FastAPI
(middleware stack, routing, dependency solving, body parsing and validation; for uploads
also a temporary file and an UploadFile per file), and the loop is on the batch's critical
path: while the model runs one batch, the loop must answer the previous one and take in the
next. This layer answers a POST /v1/embed whose content type is application/json and whose
body parses and validates as `EmbedRequest`, and a POST /v1/embed/files whose body is a
plain, complete form (server.uploads), with the routes' own pieces (`Service.embed`,
`routes.embed.answer`, the app's ApiError handler). Anything else (another route, another
content type, a body that does not parse or validate, an unusual form) goes to the FastAPI
app untouched, with its body replayed, so every refusal is still written by one piece of
code. tests/test_server_fastpath.py sends the same requests both ways and compares the
answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import orjson
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import State

from server.errors import ApiError
from server.middleware import read_body, replay
from server.routes.embed import answer, router
from server.schemas import EmbedRequest, EncodingFormat
from server.uploads import read_upload


class Call(NamedTuple):
    """What a well-formed request asks of `Service.embed`."""

    images: list[str] | list[bytes]
    dim: int | None
    encoding_format: EncodingFormat


def read_json(content_type: bytes, body: bytes) -> Call | None:
    if content_type.split(b";")[0].strip().lower() != b"application/json":
        return None
    try:
        request = EmbedRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None
    return Call(request.images, request.dim, request.encoding_format)


def read_files(content_type: bytes, body: bytes) -> Call | None:
    upload = read_upload(content_type, body)
    return upload and Call(upload.files, upload.dim, upload.encoding_format)


READERS: dict[str, Callable[[bytes, bytes], Call | None]] = {
    "/v1/embed": read_json,
    "/v1/embed/files": read_files,
}


def content_type(scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value
    return None


class EmbedFastPath:
    def __init__(self, app):
        self.app = app
        # the routes it stands in for: the metrics label their requests by their paths
        self.routes = {r.path: r for r in router.routes if getattr(r, "path", None) in READERS}

    async def __call__(self, scope, receive, send):
        take = scope["type"] == "http" and scope["path"] in READERS and scope["method"] == "POST"
        media = content_type(scope) if take else None
        if media is None:
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return None
        call = READERS[scope["path"]](media, body)
        if call is None:
            return await self.app(scope, replay(body, receive), send)
        app = scope["app"]
        scope["route"] = self.routes[scope["path"]]
        try:
            out = await app.state.service.embed(call.images, call.dim)
            response = answer(State(scope.setdefault("state", {})), out, call.encoding_format)
        except ApiError as e:
            response = await app.exception_handlers[ApiError](Request(scope), e)
        await response(scope, receive, send)
        return None
