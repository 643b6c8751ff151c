"""Request and response models: the API schema (and the OpenAPI docs at /docs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ItemId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:@-]+$",
        description="letters, digits and . _ : @ -",
    ),
]
Label = int | str | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(Strict):
    images: list[str] = Field(description="base64-encoded image files (PNG, JPEG, ...)")
    dim: int | None = Field(None, description="a nesting dim; default: the full dim")


class EmbedResponse(BaseModel):
    dim: int
    embeddings: list[list[float]]


class SearchRequest(Strict):
    images: list[str] | None = Field(None, description="base64 images to search with")
    vectors: list[list[float]] | None = Field(
        None, description="query embeddings: the full dim or exactly the dims used"
    )
    dim: int | None = Field(None, description="search (or shortlist) dim; default: full dim")
    k: int = Field(10, description="neighbours per query")
    rerank_dim: int | None = Field(
        None, description="adaptive search: shortlist at `dim`, rerank exactly at this dim"
    )
    shortlist: int | None = Field(None, description="adaptive shortlist size; default factor x k")

    @model_validator(mode="after")
    def _one_query_kind(self) -> SearchRequest:
        if (self.images is None) == (self.vectors is None):
            raise ValueError("give exactly one of `images` or `vectors`")
        return self


class Hit(BaseModel):
    id: str
    score: float
    label: Label = None
    metadata: dict[str, Any] | None = None


class SearchResponse(BaseModel):
    dim: int
    rerank_dim: int | None = None
    results: list[list[Hit]]


class NewItem(Strict):
    id: ItemId
    image: str | None = Field(None, description="base64 image; embedded by the server")
    vector: list[float] | None = Field(None, description="raw or normalised full-dim vector")
    label: Label = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> NewItem:
        if (self.image is None) == (self.vector is None):
            raise ValueError(f"item {self.id!r}: give exactly one of `image` or `vector`")
        return self


class AddRequest(Strict):
    items: list[NewItem]


class AddResponse(BaseModel):
    added: int
    size: int


class DeleteResponse(BaseModel):
    deleted: str
    size: int


class ModelInfo(BaseModel):
    arch: str
    nesting_list: list[int]
    full_dim: int
    image_size: int
    step: int
    epoch: int
    fingerprint: str
    index_size: int | None
    read_only: bool


class ErrorBody(BaseModel):
    error: str
    detail: str
