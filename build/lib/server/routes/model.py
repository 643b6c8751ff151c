"""What the server runs: the checkpoint's architecture, dims and the index size."""

from __future__ import annotations

from fastapi import APIRouter

from server.routes.deps import ServiceDep
from server.schemas import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model")
async def model(svc: ServiceDep) -> ModelInfo:
    return svc.model_info()
