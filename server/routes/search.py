"""Nearest neighbours by image or vector, exact or adaptive (shortlist, then rerank)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.middleware import record_timing
from server.routes.deps import ERRORS, JsonService
from server.schemas import SearchRequest, SearchResponse

router = APIRouter(tags=["search"], responses=ERRORS)


@router.post("/v1/search")
async def search(body: SearchRequest, request: Request, svc: JsonService) -> SearchResponse:
    response, timing, search_s = await svc.index.search(body)
    record_timing(request.state, timing, search_s)
    return response
