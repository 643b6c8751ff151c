"""The FastAPI app: lifespan (model + index), the routers, and errors as 4xx JSON."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from index.errors import IndexStoreError
from server import openapi
from server.errors import ApiError, MalformedBody, describe, from_index_error
from server.fastpath import EmbedFastPath
from server.forms import FormFraming
from server.metrics import Metrics
from server.middleware import BodyLimitMiddleware, HeadAsGet, MetricsMiddleware
from server.routes import ROUTERS
from server.service import Service
from server.settings import Settings

log = logging.getLogger("server")

MALFORMED = (
    "the body cannot be parsed as {what} (invalid JSON, not UTF-8, nested too deep, "
    "or a multipart body without a boundary)"
)


def error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    """The one error shape; the detail is made valid UTF-8 whatever the request held."""
    safe = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": code, "detail": safe}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(IndexStoreError)
    async def index_error(request: Request, exc: IndexStoreError) -> JSONResponse:
        return await api_error(request, from_index_error(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error(
                400, MalformedBody.code, f"{MALFORMED.format(what='JSON')}: {describe(errors)}"
            )
        return error(422, "invalid_request", describe(errors))

    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, exc: ValidationError) -> JSONResponse:
        return error(422, "invalid_request", describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (JSON or form)
            return error(400, MalformedBody.code, MALFORMED.format(what="JSON or multipart"))
        return error(exc.status_code, "http_error", str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "internal", "internal server error (logged)")


async def reload_loop(service: Service, interval: float) -> None:
    """Read replicas pick up a newly published index and the writer's logged mutations."""
    seen = service.index.index_signature()
    while True:
        await asyncio.sleep(interval)
        now = service.index.index_signature()
        if now == seen or not now:
            continue
        try:
            await service.index.reload()
            seen = now
        except Exception as e:
            log.warning("index reload failed, keeping the current one: %s", e)


def create_app(settings: Settings, service: Service | None = None) -> FastAPI:
    """One app per call, with its own metrics registry; `service` may be preloaded."""
    metrics = service.metrics if service is not None else Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service or await anyio.to_thread.run_sync(Service, settings, metrics)
        app.state.service = svc
        await svc.embedding.batcher.start()
        reloader = None
        if settings.read_only and settings.reload_interval_s > 0 and svc.index.store is not None:
            reloader = asyncio.create_task(reload_loop(svc, settings.reload_interval_s))
        if not settings.read_only and settings.api_key is None and svc.index.store is not None:
            log.warning("no API key set (MOCO_API_KEY): anyone can change the index")
        try:
            yield
        finally:
            if reloader is not None:
                reloader.cancel()
            await svc.embedding.batcher.stop()
            svc.close()

    app = FastAPI(
        title="MoCo-Matryoshka embedding server",
        description="Embeddings at any nesting dim, exact and adaptive (funnel) search.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # server.routes.docs: the same pages from packaged assets, no CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    openapi.install(app)
    if settings.fast_path:  # inside the two below: limits and metrics still apply
        app.add_middleware(EmbedFastPath)
    app.add_middleware(FormFraming)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(HeadAsGet)
    return app
