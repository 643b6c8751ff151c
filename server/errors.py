"""Errors the API turns into 4xx JSON answers; each message says what was wrong."""

from __future__ import annotations

import re
from typing import Any

from index.errors import DuplicateIds, IndexStoreError, ItemNotFound, UnstorableVectors

# Parts of a pydantic error location that name a schema branch, not a field.
SCHEMA_TAG = re.compile(r"^(?:\w+-(?:query|item)|constrained-\w+|function-.*|int|str)$")


class ApiError(Exception):
    """A request the server refuses: HTTP status, short code, human message."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadInput(ApiError):
    status, code = 422, "invalid_input"


class ImageTooLarge(ApiError):
    status, code = 413, "image_too_large"


class TooManyImages(ApiError):
    status, code = 413, "too_many_images"


class NotFound(ApiError):
    status, code = 404, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "read_only"


class UnsupportedMedia(ApiError):
    status, code = 415, "unsupported_media_type"


class MalformedBody(ApiError):
    status, code = 400, "malformed_body"


class NotReady(ApiError):
    status, code = 503, "not_ready"


class Overloaded(ApiError):
    status, code = 503, "overloaded"


class IndexUnavailable(ApiError):
    status, code = 500, "index_error"


def describe(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one readable line: 'body.k: Input should be a valid integer'."""
    parts: dict[str, str] = {}  # one line per distinct message: the first place it occurs
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if not SCHEMA_TAG.match(str(p)))
        loc = loc if len(loc) <= 80 else loc[:77] + "..."
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.setdefault(msg, f"{loc}: {msg}" if loc else msg)
    return "; ".join(list(parts.values())[:5])


def from_index_error(exc: IndexStoreError) -> ApiError:
    """The one place where the index library's errors become HTTP answers."""
    if isinstance(exc, ItemNotFound):
        return NotFound(str(exc))
    if isinstance(exc, DuplicateIds):
        return Conflict(str(exc))
    if isinstance(exc, UnstorableVectors):
        return BadInput(str(exc))
    return IndexUnavailable(str(exc))
