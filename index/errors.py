"""The index library's errors. The server turns them into HTTP answers in one place
(server.errors.from_index_error); command-line tools print them as one line."""

from __future__ import annotations

from core.cli import UsageError


class IndexStoreError(Exception):
    """Anything the index refuses."""


class ItemNotFound(IndexStoreError, LookupError):
    """No live item has this id."""


class DuplicateIds(IndexStoreError, ValueError):
    """An add names ids the index already holds."""


class UnstorableVectors(IndexStoreError, ValueError):
    """An add whose vectors the index's file cannot hold (NaN/inf, or out of float16's range)."""


class IndexFolderError(IndexStoreError, UsageError):
    """An index folder that is missing, corrupt or built from another checkpoint."""


class ThumbnailDamaged(IndexStoreError):
    """A thumbnail whose stored bytes are missing or fail their checksum."""
