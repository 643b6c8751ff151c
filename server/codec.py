"""Embeddings on the wire: JSON numbers or base64 of the output type's bytes, via orjson.

Byte layout of `base64` (as OpenAI's API): one string per embedding, standard base64 (RFC 4648,
`+/` alphabet, `=` padding) of its `dim` values as little-endian float32, 4 bytes each, in
dimension order. `base64_float16`: the same with little-endian IEEE half precision, 2 bytes
each (values are unit-norm components, well inside float16's range; ~3 significant digits).
Decode: `np.frombuffer(base64.b64decode(s), dtype="<f4")` (or `"<f2"`).
`float` prints each float32 with the fewest digits that read back as the same float32.

With an `output_dtype` other than float (core.quantize has the byte layouts), `float` gives
JSON numbers of that type (integers for int8, uint8, binary, ubinary, as Cohere and Voyage)
and `base64` the array's own bytes (1 per value; float16: 2, little-endian), as Voyage:
`np.frombuffer(base64.b64decode(s), dtype="i1")` for int8 and binary, `"u1"` for uint8 and
ubinary, `"<f2"` for float16.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response

from server.schemas import EncodingFormat

DTYPES = {"base64": np.dtype("<f4"), "base64_float16": np.dtype("<f2")}


def encode(x: np.ndarray, fmt: EncodingFormat) -> np.ndarray | list[str]:
    """[n, d] float32 -> what goes in the JSON: the array itself (float) or n base64 strings."""
    if fmt == "float":
        return np.ascontiguousarray(x, dtype=np.float32) if x.dtype == np.float64 else x
    if fmt == "base64" and x.dtype != np.float64:
        raw = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    else:
        raw = np.ascontiguousarray(x, dtype=DTYPES[fmt])
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]


class FastJSON(Response):
    """JSON rendered by orjson, numpy arrays included, with no per-float Python objects."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
