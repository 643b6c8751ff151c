"""Per nesting dim: quality (the checkpoint's evaluation) and search latency, to pick a dim."""

from __future__ import annotations

from fastapi import APIRouter

from server.routes.deps import ServiceDep
from server.schemas import DimsInfo

router = APIRouter(tags=["model"])


@router.get("/v1/dims")
async def dims(svc: ServiceDep) -> DimsInfo:
    return svc.index.dims_info()
