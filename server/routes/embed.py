"""Embeddings at any nesting dim: base64 images in JSON, or image files in multipart."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.datastructures import State

from server.codec import FastJSON, encode
from server.embedding import Embedded
from server.forms import form_fields
from server.middleware import record_timing
from server.routes.deps import ERRORS, JsonService, ServiceDep
from server.schemas import Dim, EmbedRequest, EmbedResponse, Encoding, Output

router = APIRouter(tags=["embed"], responses=ERRORS)


def answer(state: State, out: Embedded, fmt: str) -> FastJSON:
    """Encoded straight from the array by orjson (the response model documents the shape);
    also the answer of server.fastpath, which takes this route's well-formed requests."""
    record_timing(state, out.timing)
    return FastJSON(
        {
            "dim": out.dim,
            "encoding_format": fmt,
            "output_dtype": out.output_dtype,
            "embeddings": encode(out.vectors, fmt),
        }
    )


@router.post("/v1/embed", response_model=EmbedResponse)
async def embed(body: EmbedRequest, request: Request, svc: JsonService) -> FastJSON:
    fmt, dtype = body.encoding_format, body.output_dtype
    out = await svc.embedding.embed(body.images, body.dim, output_dtype=dtype, encoding_format=fmt)
    return answer(request.state, out, fmt)


@router.post(
    "/v1/embed/files",
    response_model=EmbedResponse,
    dependencies=[form_fields(("files", "dim", "encoding_format", "output_dtype"))],
)
async def embed_files(
    files: Annotated[list[UploadFile], File(description="image files (PNG, JPEG, ...)")],
    request: Request,
    svc: ServiceDep,
    dim: Annotated[Dim | None, Form(description="a nesting dim; default: the full dim")] = None,
    encoding_format: Annotated[Encoding, Form()] = "float",
    output_dtype: Annotated[Output, Form()] = "float",
) -> FastJSON:
    images = [await f.read() for f in files]
    out = await svc.embedding.embed(
        images, dim, output_dtype=output_dtype, encoding_format=encoding_format
    )
    return answer(request.state, out, encoding_format)
