"""Nearest neighbours by image or vector, exact or adaptive (shortlist, then rerank)."""

from __future__ import annotations

from fastapi import APIRouter

from server.routes.deps import ERRORS, JsonBody, ServiceDep
from server.schemas import SearchRequest, SearchResponse

router = APIRouter(tags=["search"], responses=ERRORS)


@router.post("/v1/search", dependencies=[JsonBody])
async def search(body: SearchRequest, svc: ServiceDep) -> SearchResponse:
    return await svc.search(body)
