"""Dependencies shared by the routers: the service, the writer check, the error responses."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from server.errors import Forbidden, Unauthorized, UnsupportedMedia
from server.schemas import ErrorBody
from server.service import Service
from server.settings import Settings


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_writer(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """Mutations: refused on read replicas (403); need the API key when one is set (401)."""
    settings: Settings = request.app.state.settings
    if settings.read_only:
        raise Forbidden("this replica is read-only (MOCO_READ_ONLY); send mutations to the writer")
    if settings.api_key is None:
        return
    given = x_api_key
    if given is None and authorization and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    expected = settings.api_key.get_secret_value().encode()
    if given is None or not secrets.compare_digest(given.encode(), expected):
        raise Unauthorized(
            "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


Writer = Depends(require_writer)


def json_body(content_type: Annotated[str | None, Header()] = None) -> None:
    """JSON routes take application/json (or no content type); anything else is a 415."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia(
            f"unsupported content type {media!r}: this route takes application/json "
            "(multipart image uploads go to POST /v1/embed/files)"
        )


JsonBody = Depends(json_body)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
