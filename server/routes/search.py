"""Nearest neighbours by image or vector, exact or adaptive (shortlist, then rerank): base64
images or vectors in JSON, or image files in multipart (the same options as form fields)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from server.forms import form_fields
from server.middleware import record_timing
from server.routes.deps import ERRORS, JsonService, ServiceDep
from server.schemas import FileSearchForm, SearchRequest, SearchResponse

router = APIRouter(tags=["search"], responses=ERRORS)


@router.post("/v1/search")
async def search(
    body: SearchRequest, request: Request, out: Response, svc: JsonService
) -> SearchResponse:
    response, timing, search_s = await svc.index.search(body)
    record_timing(request.state, timing, search_s)
    plan_header(out, response)
    return response


@router.post("/v1/search/files", dependencies=[form_fields(FileSearchForm.model_fields)])
async def search_files(
    form: Annotated[FileSearchForm, Form(media_type="multipart/form-data")],
    request: Request,
    out: Response,
    svc: ServiceDep,
) -> SearchResponse:
    """`curl -F files=@photo.jpg -F k=5 .../v1/search/files`: the JSON route's answer."""
    uploads = [await f.read() for f in form.files]
    response, timing, search_s = await svc.index.search(form, uploads)
    record_timing(request.state, timing, search_s)
    plan_header(out, response)
    return response


def plan_header(out: Response, response: SearchResponse) -> None:
    """X-Search-Plan: how the search ran (route, dims, knobs, calibrated recall)."""
    if response.search is not None:
        out.headers["X-Search-Plan"] = response.search.header(response.dim, response.rerank_dim)
