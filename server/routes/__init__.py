"""The API's routes, one APIRouter per resource; the work is in server.service."""

from __future__ import annotations

from fastapi import APIRouter

from server.routes import (
    dims,
    docs,
    embed,
    health,
    index_items,
    items,
    model,
    openai,
    page,
    search,
)

# in the order they are matched: the routes under load first (each router passed costs
# FastAPI a few us per request)
ROUTERS: list[APIRouter] = [
    embed.router,
    openai.router,
    search.router,
    health.router,
    model.router,
    dims.router,
    index_items.router,
    items.router,
    page.router,
    docs.router,
]
