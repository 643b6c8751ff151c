"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.errors import NotReady
from server.schemas import ErrorBody, Status

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Status:
    return Status(status="ok")


@router.get("/readyz", responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> Status:
    svc = request.app.state.service
    if svc is None or (svc.settings.index_dir is not None and svc.index.store is None):
        raise NotReady("model or index not loaded yet")
    return Status(status="ready")


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text exposition format."""
    body = generate_latest(request.app.state.metrics.registry)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)
