"""POST /v1/embed for well-formed JSON requests, without FastAPI's per-request machinery.

Under load the event loop spends ~250 us per embed request, ~120 us of it in FastAPI
(middleware stack, routing, dependency solving, body parsing and validation), and the loop
is on the batch's critical path: while the model runs one batch, the loop must answer the
previous one and take in the next. This layer answers a POST /v1/embed whose content type
is application/json and whose body parses and validates as `EmbedRequest`, with the
route's own pieces (`Service.embed`, `routes.embed.answer`, the app's ApiError handler).
Anything else (another route, another content type, a body that does not parse or validate)
goes to the FastAPI app untouched, with its body replayed, so every refusal is still
written by one piece of code. tests/test_server_fastpath.py sends the same requests both
ways and compares the answers.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import State

from server.errors import ApiError
from server.middleware import read_body, replay
from server.routes.embed import answer, router
from server.schemas import EmbedRequest

PATH = "/v1/embed"


def is_json(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


class EmbedFastPath:
    def __init__(self, app):
        self.app = app
        # the route it stands in for: the metrics label their requests by its path
        self.route = next(r for r in router.routes if getattr(r, "path", None) == PATH)

    async def __call__(self, scope, receive, send):
        take = scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"
        if not take or not is_json(scope):
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return None
        try:
            request = EmbedRequest.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return await self.app(scope, replay(body, receive), send)
        app = scope["app"]
        scope["route"] = self.route
        try:
            out = await app.state.service.embed(request.images, request.dim)
            response = answer(State(scope.setdefault("state", {})), out, request.encoding_format)
        except ApiError as e:
            response = await app.exception_handlers[ApiError](Request(scope), e)
        await response(scope, receive, send)
        return None
