"""POST /v1/embed, /v1/embed/files and /v1/embeddings for well-formed requests, without
FastAPI's per-request machinery.

Under load the event loop spends ~250 us per embed request, ~120 us of it in FastAPI
(middleware stack, routing, dependency solving, body parsing and validation; for uploads
also a temporary file and an UploadFile per file), and the loop is on the batch's critical
path: while the model runs one batch, the loop must answer the previous one and take in the
next. This layer answers a POST /v1/embed whose content type is application/json and whose
body parses and validates as `EmbedRequest`, a POST /v1/embed/files whose body is a plain,
complete form (server.uploads), and a JSON POST /v1/embeddings that validates as
`EmbeddingsRequest`, with the routes' own pieces (`EmbeddingService.embed`, `routes.embed.answer`,
the app's ApiError handler; `routes.openai.embed_openai` and its `refusal`). Anything else
(another route, another content type, a body that does not parse or validate, an unusual
form) goes to the FastAPI app untouched, with its body replayed, so every refusal is still
written by one piece of code. tests/test_server_fastpath.py sends the same requests both
ways and compares the answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import State
from starlette.responses import Response

from core.quantize import OutputDtype
from server.errors import ApiError
from server.middleware import read_body, replay
from server.routes import embed, openai
from server.schemas import EmbeddingsRequest, EmbedRequest, EncodingFormat
from server.service import Service
from server.uploads import read_upload


class Call(NamedTuple):
    """What a well-formed embed request asks of `EmbeddingService.embed`."""

    images: list[str] | list[bytes]
    dim: int | None
    encoding_format: EncodingFormat
    output_dtype: OutputDtype = "float"


def json_body(content_type: bytes, body: bytes, model: type[BaseModel]) -> Any:
    if content_type.split(b";")[0].strip().lower() != b"application/json":
        return None
    try:
        return model.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


def read_json(content_type: bytes, body: bytes) -> Call | None:
    request = json_body(content_type, body, EmbedRequest)
    return request and Call(
        request.images, request.dim, request.encoding_format, request.output_dtype
    )


def read_files(content_type: bytes, body: bytes) -> Call | None:
    upload = read_upload(content_type, body)
    return upload and Call(upload.files, upload.dim, upload.encoding_format)


def read_openai(content_type: bytes, body: bytes) -> EmbeddingsRequest | None:
    return json_body(content_type, body, EmbeddingsRequest)


async def run_embed(call: Call, svc: Service, state: State) -> Response:
    out = await svc.embedding.embed(
        call.images, call.dim, output_dtype=call.output_dtype, encoding_format=call.encoding_format
    )
    return embed.answer(state, out, call.encoding_format)


async def refuse(scope, e: ApiError) -> Response:
    return await scope["app"].exception_handlers[ApiError](Request(scope), e)


async def refuse_openai(scope, e: ApiError) -> Response:
    return openai.refusal(e)


class Endpoint(NamedTuple):
    read: Callable[[bytes, bytes], Any]  # content type, body -> the request, or None: the route's
    run: Callable[[Any, Service, State], Awaitable[Response]]
    refuse: Callable[[Any, ApiError], Awaitable[Response]]


ENDPOINTS = {
    "/v1/embed": Endpoint(read_json, run_embed, refuse),
    "/v1/embed/files": Endpoint(read_files, run_embed, refuse),
    "/v1/embeddings": Endpoint(read_openai, openai.embed_openai, refuse_openai),
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
        routes = [*embed.router.routes, *openai.router.routes]
        self.routes = {r.path: r for r in routes if getattr(r, "path", None) in ENDPOINTS}

    async def __call__(self, scope, receive, send):
        take = scope["type"] == "http" and scope["path"] in ENDPOINTS and scope["method"] == "POST"
        media = content_type(scope) if take else None
        if media is None:
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return None
        endpoint = ENDPOINTS[scope["path"]]
        request = endpoint.read(media, body)
        if request is None:
            return await self.app(scope, replay(body, receive), send)
        scope["route"] = self.routes[scope["path"]]
        state = State(scope.setdefault("state", {}))
        try:
            response = await endpoint.run(request, scope["app"].state.service, state)
        except ApiError as e:
            response = await endpoint.refuse(scope, e)
        await response(scope, receive, send)
        return None
