"""Schemathesis hooks for `make fuzz` (loaded through SCHEMATHESIS_HOOKS): base64 fields
(`format: byte`) get real images of random size, mode and format as often as arbitrary bytes,
so the embed and search handlers are fuzzed, not only their validation."""

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
