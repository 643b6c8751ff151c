"""Embeddings at any nesting dim: base64 images in JSON, or image files in multipart."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from server.routes.deps import ERRORS, JsonBody, ServiceDep
from server.schemas import Dim, EmbedRequest, EmbedResponse

router = APIRouter(tags=["embed"], responses=ERRORS)


@router.post("/v1/embed", dependencies=[JsonBody])
async def embed(body: EmbedRequest, svc: ServiceDep) -> EmbedResponse:
    return await svc.embed(body.images, body.dim)


@router.post("/v1/embed/files")
async def embed_files(
    files: Annotated[list[UploadFile], File(description="image files (PNG, JPEG, ...)")],
    svc: ServiceDep,
    dim: Annotated[Dim | None, Form(description="a nesting dim; default: the full dim")] = None,
) -> EmbedResponse:
    return await svc.embed([await f.read() for f in files], dim)
