"""OpenAI-compatible embeddings (`POST /v1/embeddings`, `GET /v1/models`) for OpenAI clients.

`input` holds images (base64 files or data: URLs), `dimensions` is any nesting dim. Errors
have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so its clients raise
them with the message; a request the rest of the API answers 422 is a 400 here, as OpenAI's.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import State
from starlette.exceptions import HTTPException

from server.codec import FastJSON, encode
from server.errors import ApiError, MalformedBody, ModelNotFound, describe
from server.middleware import record_timing
from server.routes.deps import ERRORS, JsonService, ServiceDep
from server.schemas import EmbeddingsRequest, EmbeddingsResponse, ModelList, OpenAIErrorBody
from server.service import Service

# the first word of our messages -> the request field it is about
PARAMS = {
    "dimensions": "dimensions",
    "image": "input",
    "batch": "input",
    "model": "model",
    "output_dtype": "output_dtype",
    "encoding_format": "encoding_format",
}


def openai_error(
    status: int, message: str, code: str, param: str | None, headers: dict | None = None
) -> FastJSON:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"message": message, "type": kind, "param": param, "code": code}
    return FastJSON({"error": body}, status_code=status, headers=headers)


def refusal(e: ApiError) -> FastJSON:
    """An ApiError in OpenAI's shape; also server.fastpath's for this route."""
    status = 400 if e.status == 422 else e.status
    param = PARAMS.get(e.message.split(" ", 1)[0])
    return openai_error(status, e.message, e.code, param, e.headers)


class OpenAIErrors(APIRoute):
    """This router's errors in OpenAI's shape (the app's handlers answer everywhere else)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as e:
                errors = list(e.errors())
                if errors and errors[0].get("type") == "json_invalid":  # loc[1]: a byte offset
                    message = "the body cannot be parsed as JSON (invalid JSON or not UTF-8)"
                    return openai_error(400, message, MalformedBody.code, None)
                loc = errors[0].get("loc", ()) if errors else ()
                param = str(loc[1]) if len(loc) > 1 else None
                return openai_error(400, describe(errors), "invalid_request", param)
            except ApiError as e:
                return refusal(e)
            except HTTPException as e:  # FastAPI's "error parsing the body" (e.g. not UTF-8)
                message = "the body cannot be parsed as JSON (invalid JSON or not UTF-8)"
                return openai_error(e.status_code, message, MalformedBody.code, None)

        return route


OPENAI_ERRORS = {code: {"model": OpenAIErrorBody} for code in ERRORS}
router = APIRouter(tags=["openai"], responses=OPENAI_ERRORS, route_class=OpenAIErrors)


@router.post("/v1/embeddings", response_model=EmbeddingsResponse)
async def embeddings(body: EmbeddingsRequest, request: Request, svc: JsonService) -> FastJSON:
    return await embed_openai(body, svc, request.state)


async def embed_openai(body: EmbeddingsRequest, svc: Service, state: State) -> FastJSON:
    """The route's work; also server.fastpath's, which takes its well-formed requests."""
    served = svc.settings.model_name
    if body.model != served:
        raise ModelNotFound(
            f"model {body.model!r} is not served here; this server serves {served!r}"
        )
    images = [body.input] if isinstance(body.input, str) else body.input
    out = await svc.embedding.embed(
        images, body.dimensions, "dimensions", body.output_dtype, body.encoding_format
    )
    record_timing(state, out.timing)
    data = [
        {"object": "embedding", "index": i, "embedding": v}
        for i, v in enumerate(encode(out.vectors, body.encoding_format))
    ]
    usage = {"prompt_tokens": len(images), "total_tokens": len(images)}
    return FastJSON({"object": "list", "data": data, "model": served, "usage": usage})


@router.get("/v1/models", response_model=ModelList)
async def models(svc: ServiceDep) -> FastJSON:
    card = {"id": svc.settings.model_name, "object": "model", "created": 0, "owned_by": "local"}
    return FastJSON({"object": "list", "data": [card]})
