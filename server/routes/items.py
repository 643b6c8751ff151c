"""Read-only item lookups for the search page: a random sample, one item, its thumbnail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from index.thumbnails import MEDIA_TYPE
from server.routes.deps import ERRORS, ServiceDep
from server.schemas import ItemId, ItemInfo, ItemSample

router = APIRouter(tags=["items"], responses=ERRORS)

# A thumbnail changes only when its id is deleted and re-added: cache, then revalidate.
THUMBNAIL_CACHE = "public, max-age=3600"


@router.get("/v1/items")
async def sample_items(
    svc: ServiceDep,
    sample: Annotated[int, Query(ge=1, le=100, description="how many random items")],
) -> ItemSample:
    return svc.index.sample_items(sample)


@router.get("/v1/items/{item_id}")
async def get_item(item_id: ItemId, svc: ServiceDep) -> ItemInfo:
    """The item with its full-dim vector (the page searches with it)."""
    return svc.index.item_info(item_id)


@router.get(
    "/v1/items/{item_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}}, 304: {"description": "not modified"}},
)
async def get_thumbnail(
    item_id: ItemId,
    svc: ServiceDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    data, etag = svc.index.thumbnail(item_id)
    headers = {"ETag": etag, "Cache-Control": THUMBNAIL_CACHE, "X-Content-Type-Options": "nosniff"}
    if matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=MEDIA_TYPE, headers=headers)


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or a list of entity tags compared weakly (W/ ignored)."""
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags
