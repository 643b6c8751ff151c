"""The FastAPI app: lifespan (model + index), routes, auth, and errors as 4xx JSON."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import ApiError, BadInput, Forbidden, Unauthorized, UnsupportedMedia
from server.metrics import Metrics
from server.middleware import BodyLimitMiddleware, MetricsMiddleware
from server.schemas import (
    AddRequest,
    AddResponse,
    DeleteResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorBody,
    Hit,
    ModelInfo,
    SearchRequest,
    SearchResponse,
)
from server.service import Service
from server.settings import Settings

log = logging.getLogger("server")

EMBED_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": EmbedRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "dim": {"type": "integer"},
                    },
                    "required": ["files"],
                }
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 413, 415, 422, 503)
}


def error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def describe(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one readable line: 'body.k: Input should be a valid integer'."""
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", describe(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, exc: ValidationError) -> JSONResponse:
        return error(422, "invalid_request", describe(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, "http_error", str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "internal", "internal server error (logged)")


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


async def reload_loop(service: Service, interval: float) -> None:
    """Read replicas pick up a newly published index and the writer's logged mutations."""
    seen = service.index_signature()
    while True:
        await asyncio.sleep(interval)
        now = service.index_signature()
        if now == seen or not now:
            continue
        try:
            await service.reload()
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
        await svc.batcher.start()
        reloader = None
        if settings.read_only and settings.reload_interval_s > 0 and svc.store is not None:
            reloader = asyncio.create_task(reload_loop(svc, settings.reload_interval_s))
        if not settings.read_only and settings.api_key is None and svc.store is not None:
            log.warning("no API key set (MOCO_API_KEY): anyone can change the index")
        try:
            yield
        finally:
            if reloader is not None:
                reloader.cancel()
            await svc.batcher.stop()
            svc.close()

    app = FastAPI(
        title="MoCo-Matryoshka embedding server",
        description="Embeddings at any nesting dim, exact and adaptive (funnel) search.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    install_error_handlers(app)
    add_routes(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def add_routes(app: FastAPI) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorBody}})
    async def readyz(request: Request) -> Response:
        svc: Service | None = request.app.state.service
        if svc is None or (svc.settings.index_dir is not None and svc.store is None):
            return error(503, "not_ready", "model or index not loaded yet")
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(
            generate_latest(request.app.state.metrics.registry), 200, media_type=CONTENT_TYPE_LATEST
        )

    @app.get("/v1/model", response_model=ModelInfo)
    async def model(svc: ServiceDep) -> ModelInfo:
        ckpt = svc.checkpoint
        return ModelInfo(
            arch=ckpt.model.arch,
            nesting_list=svc.nesting_list,
            full_dim=svc.full_dim,
            image_size=ckpt.model.image_size,
            step=ckpt.step,
            epoch=ckpt.epoch,
            fingerprint=svc.fingerprint,
            index_size=len(svc.store) if svc.store is not None else None,
            read_only=svc.settings.read_only,
        )

    @app.post("/v1/embed", response_model=EmbedResponse, openapi_extra=EMBED_BODY, responses=ERRORS)
    async def embed(request: Request, svc: ServiceDep) -> EmbedResponse:
        """JSON `{"images": [base64...], "dim": d}` or multipart files with a `dim` field."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            limit = svc.settings.max_images
            form = await request.form(max_files=limit + 1, max_fields=8)
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if len(files) > limit:
                raise BadInput(f"batch too large: more than {limit} files, the limit is {limit}")
            dim = svc.check_dim(parse_int_field(form.get("dim"), "dim"))
            raw = await svc.embed_bytes([await f.read() for f in files])
        elif ctype in ("application/json", ""):
            body = EmbedRequest.model_validate_json(await request.body())
            dim = svc.check_dim(body.dim)
            raw = await svc.embed_base64(body.images)
        else:
            raise UnsupportedMedia(f"unsupported content type {ctype!r}; send JSON or multipart")
        return EmbedResponse(dim=dim, embeddings=svc.at_dim(raw, dim).tolist())

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(body: SearchRequest, svc: ServiceDep) -> SearchResponse:
        dim = svc.check_dim(body.dim)
        rerank_dim = None
        if body.rerank_dim is not None:
            rerank_dim = svc.check_dim(body.rerank_dim, "rerank_dim")
            if rerank_dim < dim:
                raise BadInput(f"rerank_dim {rerank_dim} must be at least dim {dim}")
        svc.check_k(body.k)
        if body.shortlist is not None and not body.k <= body.shortlist <= 100 * svc.settings.max_k:
            raise BadInput(f"shortlist must be between k={body.k} and {100 * svc.settings.max_k}")
        svc.require_index()
        if body.images is not None:
            queries = await svc.embed_base64(body.images)
        else:
            assert body.vectors is not None
            svc.check_count(len(body.vectors), "vectors")
            needed = max(dim, rerank_dim or 0)
            queries = svc.check_vectors(body.vectors, {needed, svc.full_dim})
        scores, rows, items = await svc.search(queries, body.k, dim, rerank_dim, body.shortlist)
        return SearchResponse(
            dim=dim,
            rerank_dim=rerank_dim,
            results=[
                [hit(items[r], s) for s, r in zip(srow.tolist(), rrow.tolist(), strict=True)]
                for srow, rrow in zip(scores, rows, strict=True)
            ],
        )

    @app.post(
        "/v1/index/items",
        response_model=AddResponse,
        dependencies=[Depends(require_writer)],
        responses=ERRORS,
    )
    async def add_items(body: AddRequest, svc: ServiceDep) -> AddResponse:
        """Embed (images) or take (full-dim vectors), then log durably before answering."""
        svc.require_index()
        svc.check_count(len(body.items), "items")
        ids = [it.id for it in body.items]
        if len(set(ids)) != len(ids):
            raise BadInput("duplicate ids in the request")
        with_images = [i for i, it in enumerate(body.items) if it.image is not None]
        with_vectors = [i for i, it in enumerate(body.items) if it.vector is not None]
        vectors = np.empty((len(ids), svc.full_dim), dtype=np.float32)
        if with_vectors:
            given = [body.items[i].vector or [] for i in with_vectors]
            vectors[with_vectors] = svc.check_vectors(given, {svc.full_dim})
        if with_images:
            vectors[with_images] = await svc.embed_base64(
                [body.items[i].image or "" for i in with_images]
            )
        records = [{"id": it.id, "label": it.label, "metadata": it.metadata} for it in body.items]
        size = await svc.add(records, vectors)
        return AddResponse(added=len(records), size=size)

    @app.delete(
        "/v1/index/items/{item_id}",
        response_model=DeleteResponse,
        dependencies=[Depends(require_writer)],
        responses=ERRORS,
    )
    async def delete_item(item_id: str, svc: ServiceDep) -> DeleteResponse:
        size = await svc.delete(item_id)
        return DeleteResponse(deleted=item_id, size=size)


def parse_int_field(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadInput(f"form field {name} must be an integer, not a file")
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"form field {name} must be an integer, got {value[:40]!r}") from None


def hit(item: dict[str, Any], score: float) -> Hit:
    return Hit(id=item["id"], score=score, label=item.get("label"), metadata=item.get("metadata"))
