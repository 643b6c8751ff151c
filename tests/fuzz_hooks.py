"""Schemathesis hooks for `make fuzz` (loaded through SCHEMATHESIS_HOOKS): base64 fields
(`format: byte`) get real images of random size, mode and format as often as arbitrary bytes,
so the embed and search handlers are fuzzed, not only their validation; multipart `files`
parts likewise."""

from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MODES = ("RGB", "L", "RGBA", "P", "CMYK")


def encoded(width: int, height: int, mode: str, fmt: str, shade: int) -> str:
    image = Image.new("RGB", (width, height), (shade, 255 - shade, shade // 2)).convert(mode)
    buf = io.BytesIO()
    try:
        image.save(buf, fmt)
    except (OSError, ValueError):  # a mode this format cannot hold (CMYK as BMP, ...)
        buf = io.BytesIO()
        image.convert("RGB").save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


IMAGES = st.builds(
    encoded,
    st.integers(1, 96),
    st.integers(1, 96),
    st.sampled_from(MODES),
    st.sampled_from(FORMATS),
    st.integers(0, 255),
)
NOT_IMAGES = st.binary(min_size=1, max_size=64).map(lambda b: base64.b64encode(b).decode())

schemathesis.openapi.format("byte", st.one_of(IMAGES, NOT_IMAGES))


RAW_FILE = st.one_of(IMAGES.map(base64.b64decode), st.binary(min_size=1, max_size=64))


@schemathesis.hook
def flatmap_body(context, body):
    """Multipart uploads: each generated `files` part becomes a real image file as often as
    arbitrary bytes. Parts a negative case made non-files, and the number of parts, are
    kept, so schema-violating requests still violate the schema."""
    if context.operation is None or not context.operation.path.endswith("/files"):
        return st.just(body)
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str | bytes) for f in files):
        return st.just(body)
    return st.lists(RAW_FILE, min_size=len(files), max_size=len(files)).map(
        lambda new: {**body, "files": new}
    )
