"""Untrusted image bytes -> preprocessed tensors, refusing bad base64, non-images and bombs."""

from __future__ import annotations

import base64
import binascii
import io

import torch
from PIL import Image, UnidentifiedImageError

from core.preprocess import EvalPreprocess
from server.errors import BadInput, ImageTooLarge


def decode_base64(text: str, position: int) -> bytes:
    """Standard base64, optionally as a data: URI; whitespace ignored."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if not text:
        raise BadInput(f"image {position} is empty")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"image {position} is not valid base64") from None


def open_image(data: bytes, position: int, max_pixels: int) -> Image.Image:
    """Read the header, check the pixel count, and only then decode."""
    if not data:
        raise BadInput(f"image {position} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image {position} has too many pixels (limit {max_pixels})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadInput(f"image {position} is not an image file PIL can read") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image {position} is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}"
        )
    if width < 1 or height < 1:
        raise BadInput(f"image {position} has no pixels ({width}x{height})")
    try:
        image.load()
    except Exception as e:  # any decoder failure on hostile bytes is the client's problem
        raise BadInput(f"image {position} could not be decoded ({type(e).__name__})") from None
    return image


def decode_into(
    out: torch.Tensor, sources: list[bytes | str], first: int, pre: EvalPreprocess, max_pixels: int
) -> None:
    """Decode files (bytes, or base64 text) into `out` [n, 3, S, S] uint8, in place.

    `first` is the position of sources[0] in its request, for the error message.
    """
    for i, source in enumerate(sources):
        position = first + i
        data = source if isinstance(source, bytes) else decode_base64(source, position)
        image = open_image(data, position, max_pixels)
        try:
            out[i] = pre.uint8(image)
        except Exception as e:
            raise BadInput(
                f"image {position} could not be converted to RGB ({type(e).__name__})"
            ) from None
