"""Index mutations (writer only, API key): add items, delete one by id."""

from __future__ import annotations

from fastapi import APIRouter

from server.routes.deps import ERRORS, JsonService, ServiceDep, Writer
from server.schemas import AddRequest, AddResponse, DeleteResponse, ItemId

router = APIRouter(tags=["index"], responses=ERRORS, dependencies=[Writer])


@router.post("/v1/index/items")
async def add_items(body: AddRequest, svc: JsonService) -> AddResponse:
    return await svc.index.add_items(body.items)


@router.delete("/v1/index/items/{item_id}")
async def delete_item(item_id: ItemId, svc: ServiceDep) -> DeleteResponse:
    return await svc.index.delete(item_id)
