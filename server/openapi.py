"""The OpenAPI schema narrowed to this server: its checkpoint's dims and vector length, and
the operator's limits, so schema-driven clients (and fuzzers) send what it accepts.

The static bounds come from server.schemas; only the values that depend on the loaded
checkpoint or the settings are filled in here, from the same fields `EmbeddingService.check` reads.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from server.service import Service


def install(app: FastAPI) -> None:
    """Serve the narrowed schema once the service is loaded (the generic one before)."""
    generic = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generic()
            service: Service | None = app.state.service
            if service is None:
                app.openapi_schema = None  # not loaded yet: do not cache the generic schema
                return spec
            narrow(spec, service)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def narrow(spec: dict[str, Any], svc: Service) -> None:
    schemas = spec["components"]["schemas"]
    settings = svc.settings
    files = next(name for name in schemas if name.startswith("Body_embed_files"))
    searches = ("ImageSearch", "VectorSearch", "FileSearchForm")
    for name in ("EmbedRequest", *searches, files):
        props = schemas[name]["properties"]
        for field in ("dim", "rerank_dim"):
            if field in props:
                props[field]["anyOf"][0] = {"type": "integer", "enum": svc.embedding.nesting_list}
    for name in searches:
        props = schemas[name]["properties"]
        props["k"]["maximum"] = settings.max_k
        props["shortlist"]["anyOf"][0]["maximum"] = 100 * settings.max_k
    for name, field in (
        ("EmbedRequest", "images"),
        ("ImageSearch", "images"),
        ("VectorSearch", "vectors"),
        ("FileSearchForm", "files"),
        ("AddRequest", "items"),
    ):
        schemas[name]["properties"][field]["maxItems"] = settings.max_images
    openai = schemas["EmbeddingsRequest"]["properties"]
    openai["model"] = {"type": "string", "enum": [settings.model_name], "title": "Model"}
    openai["dimensions"]["anyOf"][0] = {"type": "integer", "enum": svc.embedding.nesting_list}
    full = {"minItems": svc.embedding.full_dim, "maxItems": svc.embedding.full_dim}
    schemas["VectorSearch"]["properties"]["vectors"]["items"].update(full)
    schemas["VectorItem"]["properties"]["vector"].update(full)
