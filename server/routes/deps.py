"""Dependencies shared by the routers: the service, the writer check, the error responses.

All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, two thread
hops per request that the profile showed as a tenth of the server's CPU under load.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.errors import Forbidden, Unauthorized, UnsupportedMedia
from server.schemas import ErrorBody
from server.service import Service
from server.settings import Settings


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


bearer = HTTPBearer(auto_error=False, description="the server's API key (MOCO_API_KEY)")
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the same key, as a header"
)


async def require_writer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    x_api_key: Annotated[str | None, Security(api_key_header)],
) -> None:
    """Mutations: refused on read replicas (403); need the API key when one is set (401)."""
    settings: Settings = request.app.state.settings
    if settings.read_only:
        raise Forbidden("this replica is read-only (MOCO_READ_ONLY); send mutations to the writer")
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = [x_api_key, credentials.credentials if credentials else None]
    if not any(key and secrets.compare_digest(key.encode(), expected) for key in given):
        raise Unauthorized(
            "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


Writer = Depends(require_writer)


async def json_service(request: Request) -> Service:
    """JSON routes: application/json (or no content type) or a 415, then the service; one
    dependency, not two: FastAPI spends ~10 us per dependency per request."""
    content_type = request.headers.get("content-type") or "application/json"
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia(
            f"unsupported content type {media!r}: this route takes application/json "
            "(multipart image uploads go to POST /v1/embed/files and /v1/search/files)"
        )
    return request.app.state.service


JsonService = Annotated[Service, Depends(json_service)]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
