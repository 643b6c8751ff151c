"""The API's routes, one APIRouter per resource; the work is in server.service."""

from __future__ import annotations

from fastapi import APIRouter

from server.routes import dims, embed, health, index_items, items, model, openai, page, search

ROUTERS: list[APIRouter] = [
    health.router,
    model.router,
    dims.router,
    embed.router,
    search.router,
    index_items.router,
    items.router,
    page.router,
    openai.router,
]
