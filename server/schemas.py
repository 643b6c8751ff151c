"""Request and response models: the API schema (and the OpenAPI docs at /docs).

Every rule that does not depend on the loaded checkpoint or the operator's settings lives
here, so the OpenAPI schema states it: k >= 1, list lengths, string sizes, finite float32
values, exactly one query kind. The checkpoint's dims and the operator's (lower) limits are
checked by `Service.check_*`. The MAX_* ceilings bound what an operator may configure.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

import numpy as np
from fastapi import UploadFile
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from core.quantize import OutputDtype
from index.calibration import Setting as CalibratedSetting
from index.filter import BoundedFilter

MAX_BATCH = 4096  # images, vectors or items in one request
MAX_K = 10_000
MAX_DIM = 65_536
MAX_NPROBE = 65_536  # IVF lists probed per query
MAX_EF_SEARCH = 4096  # HNSW candidate list per query
MAX_IMAGE_CHARS = 1 << 26  # base64 text of one image; the body limit usually binds first
MAX_LABEL_CHARS = 256
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_DEPTH = 8
FLOAT32_MAX = float(np.finfo(np.float32).max)


def servable(text: str) -> str:
    """Refuse strings JSON cannot carry to every client (lone UTF-16 surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode)") from None
    return text


def servable_json(value: Any, depth: int = 0) -> Any:
    """Metadata must round-trip: valid Unicode strings, finite numbers, bounded nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        servable(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("contains NaN or Infinity (not valid JSON)")
    elif isinstance(value, dict):
        for key, item in value.items():
            servable(key)
            servable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            servable_json(item, depth + 1)
    elif value is not None and not isinstance(value, int | float):
        raise ValueError(f"holds a {type(value).__name__}, not a JSON value")
    return value


Text = Annotated[str, AfterValidator(servable)]
ItemId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        # letters, digits and . _ : @ -, but not "." or "..": every id is a safe path segment
        pattern=r"^(?:[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*|\.[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*"
        r"|\.\.[A-Za-z0-9._:@-]+)$",
        description="letters, digits and . _ : @ - (not `.` or `..`); 1 to 128 characters",
    ),
]
JSON_SAFE_INT = 2**53  # exact in every JSON client (JavaScript numbers are doubles)
Label = (  # strict: JSON true/false is not the label 1/0 (the schema says integer or string)
    Annotated[int, Field(strict=True, ge=-JSON_SAFE_INT, le=JSON_SAFE_INT)]
    | Annotated[Text, Field(max_length=MAX_LABEL_CHARS)]
    | None
)
Metadata = Annotated[
    dict[Annotated[Text, Field(min_length=1, max_length=MAX_METADATA_KEY_CHARS)], Any],
    Field(max_length=MAX_METADATA_KEYS, description="free JSON, stored and returned as is"),
    AfterValidator(servable_json),
]
Image64 = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_IMAGE_CHARS,
        description="base64 image file (or data: URI)",
        json_schema_extra={"format": "byte"},  # OpenAPI's name for base64 text
    ),
]
Images = Annotated[list[Image64], Field(min_length=1, max_length=MAX_BATCH)]
Float32 = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False)]
Vector = Annotated[list[Float32], Field(min_length=1, max_length=MAX_DIM)]


def _not_a_bool(value: Any) -> Any:
    """JSON `true` would otherwise be read as dim 1."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not {str(value).lower()}")
    return value


def _not_a_number(value: Any) -> Any:
    """JSON 1 or 0 would otherwise be read as true or false (form text "true" still is)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value}")
    return value


Count = Annotated[int, BeforeValidator(_not_a_bool)]
Switch = Annotated[bool, BeforeValidator(_not_a_number)]
Dim = Annotated[
    int,
    BeforeValidator(_not_a_bool),
    Field(ge=1, le=MAX_DIM, description="a nesting dim of the checkpoint"),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def one_of(first: str, second: str, kind: str) -> Discriminator:
    """A union tagged by which of two keys the body holds; neither or both is one clear 422."""

    def tag(value: Any) -> str | None:
        if isinstance(value, BaseModel):
            key = first if hasattr(value, first) else second
        elif not isinstance(value, dict) or (first in value) == (second in value):
            return None
        else:
            key = first if first in value else second
        return f"{key.removesuffix('s')}-{kind}"

    return Discriminator(
        tag,
        custom_error_type="one_of",
        custom_error_message=f"give exactly one of `{first}` or `{second}`",
    )


# what Cohere (embedding_types), Voyage/Mistral (output_dimension) call ours
OTHER_NAMES = {
    "embedding_types": "output_dtype",
    "output_dimension": "dimensions",
    "embedding_type": "output_dtype",
    "dtype": "output_dtype",
}
EncodingFormat = Literal["float", "base64", "base64_float16"]  # layouts: server/codec.py
Encoding = Annotated[
    EncodingFormat,
    Field(
        description="float: JSON numbers; base64: little-endian float32 bytes (as OpenAI); "
        "base64_float16: little-endian float16 bytes (docs/SERVING.md has the layout)"
    ),
]


Output = Annotated[
    OutputDtype,
    Field(
        description="float | float16 | int8 | uint8 (per-coordinate grid calibrated on the "
        "train split) | binary | ubinary (sign bits packed 8 per byte, first dim in the high "
        "bit; binary = ubinary - 128), as Cohere's and Voyage's output types; applied after "
        "truncation to `dim` (docs/SERVING.md, Output types)"
    ),
]


class EmbedRequest(Strict):
    images: Images
    dim: Dim | None = Field(None, description="a nesting dim; default: the full dim")
    encoding_format: Encoding = "float"
    output_dtype: Output = "float"


class EmbedResponse(BaseModel):
    dim: int
    encoding_format: EncodingFormat = "float"
    output_dtype: OutputDtype = "float"
    embeddings: list[list[float]] | list[list[int]] | list[str]


class EmbeddingsRequest(Strict):
    """OpenAI's POST /v1/embeddings body; `input` holds images (base64 or data: URLs)."""

    input: Image64 | Annotated[list[Image64], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description="one image or a list: base64 image files or data: URLs"
    )
    model: str = Field(max_length=256, description="the served model's name (GET /v1/models)")
    dimensions: Dim | None = Field(None, description="a nesting dim; default: the full dim")
    encoding_format: Literal["float", "base64"] = "float"
    output_dtype: Output = Field(
        "float",
        description="as Mistral's and Voyage's `output_dtype`: float, float16, int8, uint8, "
        "binary, ubinary; with encoding_format base64, the type's own bytes (as Voyage)",
    )
    user: str | None = Field(None, max_length=256, description="accepted and ignored")

    @model_validator(mode="before")
    @classmethod
    def _other_apis_names(cls, value: Any) -> Any:
        """Names other embedding APIs use for what this one calls otherwise: say which."""
        if isinstance(value, dict):
            for theirs, ours in OTHER_NAMES.items():
                if theirs in value:
                    raise ValueError(
                        f"`{theirs}` is not supported here; use `{ours}` "
                        f"(output_dtype: {', '.join(get_args(OutputDtype))})"
                    )
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _images_not_tokens(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(v, int | list) for v in value):
            raise ValueError(
                "this is an image model: input must be base64 images or data: URLs, not token ids"
            )
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | list[int] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int = Field(description="images embedded (one 'token' per image)")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchOptions(Strict):
    dim: Dim | None = Field(None, description="search (or shortlist) dim; default: full dim")
    k: Count = Field(10, ge=1, le=MAX_K, description="neighbours per query")
    rerank_dim: Dim | None = Field(
        None, description="adaptive search: shortlist at `dim`, rerank exactly at this dim"
    )
    shortlist: Count | None = Field(
        None, ge=1, le=100 * MAX_K, description="adaptive shortlist size; default factor x k"
    )
    nprobe: Count | None = Field(
        None, ge=1, le=MAX_NPROBE, description="ANN (IVF): lists probed; default: the server's"
    )
    ef_search: Count | None = Field(
        None, ge=1, le=MAX_EF_SEARCH, description="ANN (HNSW): search breadth; default: server's"
    )
    use_ann: Switch | None = Field(
        None,
        description="shortlist from the index's ANN (true), exactly (false), or let the server "
        "pick (null: the ANN for adaptive searches at its dim on large indexes)",
    )
    filter: BoundedFilter | None = None
    recall_target: float | None = Field(
        None,
        gt=0,
        le=1,
        description="recall@10 to reach instead of knobs: the server picks the cheapest setting "
        "its calibration table (GET /v1/dims) measured at or above it; dim, rerank_dim, "
        "shortlist, nprobe and ef_search given in the same request win over the pick",
    )


class ImageSearch(SearchOptions):
    images: Images = Field(description="base64 images to search with")


class VectorSearch(SearchOptions):
    vectors: Annotated[list[Vector], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description="query embeddings: the full dim or exactly the dims used"
    )
    vector_dtype: OutputDtype = Field(
        "float",
        description="the output_dtype the vectors are in, as /v1/embed returned them at `dim` "
        "(JSON numbers): int8/uint8 are decoded with the model's grid, binary/ubinary to "
        "+-1 signs; not with rerank_dim (a compressed query has only `dim` values)",
    )


class FileSearchForm(SearchOptions):
    """POST /v1/search/files: the JSON route's options as form fields, the query images as
    uploaded files (no base64, so a photo of any size fits a shell command line)."""

    files: list[UploadFile] = Field(
        min_length=1, max_length=MAX_BATCH, description="image files (PNG, JPEG...) to search by"
    )


SearchRequest = Annotated[
    Annotated[ImageSearch, Tag("image-query")] | Annotated[VectorSearch, Tag("vector-query")],
    one_of("images", "vectors", "query"),
]


def scrubbed(value: Any) -> Any:
    """Stored JSON made servable: lone surrogates (stored before the door refused them)
    become U+FFFD and non-finite floats null, so one bad item cannot break a response."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {scrubbed(k): scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrubbed(v) for v in value]
    return value


class Hit(BaseModel):
    id: str
    score: float
    label: int | str | None = None
    metadata: dict[str, Any] | None = None
    percentile: float | None = Field(
        None,
        description="share (0-100) of the index's own items whose nearest neighbour scores "
        "below this score at the same dim, measured when the index was built: near 0 is a "
        "weak match (weaker than almost every item's nearest neighbour); null for an index "
        "built without that measurement",
    )

    @classmethod
    def of(cls, item: dict[str, Any], score: float, percentile: float | None = None) -> Hit:
        return cls(
            id=item["id"],
            score=score,
            label=scrubbed(item.get("label")),
            metadata=scrubbed(item.get("metadata")),
            percentile=percentile,
        )


class ItemInfo(BaseModel):
    """An indexed item; `vector` (raw, full dim) only when one item is asked for."""

    id: str
    label: int | str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None

    @classmethod
    def of(cls, item: dict[str, Any], vector: list[float] | None = None) -> ItemInfo:
        return cls(
            id=item["id"],
            label=scrubbed(item.get("label")),
            metadata=scrubbed(item.get("metadata")),
            vector=vector,
        )


class ItemSample(BaseModel):
    items: list[ItemInfo]


class SearchInfo(BaseModel):
    """How the server ran the search (also the X-Search-Plan header)."""

    route: Literal["exact", "exact_shortlist", "ann", "matching_rows"] = Field(
        description="exact: exact at `dim`; ann / exact_shortlist: a funnel's shortlist; "
        "matching_rows: an exact scan of the rows the filter admits (a selective filter)"
    )
    shortlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    matched: int | None = Field(None, description="live items the filter admits")
    recall_target: float | None = None
    calibrated_recall: float | None = Field(
        None, description="the chosen setting's recall@10 in the calibration table"
    )

    def header(self, dim: int, rerank_dim: int | None) -> str:
        parts = {"route": self.route, "dim": dim, "rerank_dim": rerank_dim, **self.model_dump()}
        parts.pop("recall_target")
        return ";".join(f"{k}={v}" for k, v in parts.items() if v is not None)


class SearchResponse(BaseModel):
    dim: int
    rerank_dim: int | None = None
    results: list[list[Hit]]
    search: SearchInfo | None = None


class ItemFields(Strict):
    id: ItemId
    label: Label = None
    metadata: Metadata | None = None


class ImageItem(ItemFields):
    image: Image64 = Field(description="base64 image; embedded by the server")


class VectorItem(ItemFields):
    vector: Vector = Field(description="raw or normalised full-dim vector")


NewItem = Annotated[
    Annotated[ImageItem, Tag("image-item")] | Annotated[VectorItem, Tag("vector-item")],
    one_of("image", "vector", "item"),
]


class AddRequest(Strict):
    items: Annotated[list[NewItem], Field(min_length=1, max_length=MAX_BATCH)]


class AddResponse(BaseModel):
    added: int
    size: int


class DeleteResponse(BaseModel):
    deleted: str
    size: int


class ModelInfo(BaseModel):
    arch: str
    nesting_list: list[int]
    full_dim: int
    image_size: int
    step: int
    epoch: int
    fingerprint: str
    rotation: Literal["pca", "none"] = Field(
        description="pca: the embedding is rotated onto the principal axes of the training "
        "embeddings, so each prefix holds the most variance (docs/EVALUATION.md)"
    )
    index_size: int | None
    read_only: bool
    links: dict[str, str] = Field(
        default_factory=lambda: {"dims": "/v1/dims"},
        description="related resources: /v1/dims has per-dim quality and latency",
    )


class DimInfo(BaseModel):
    dim: int
    knn_top1: float | None = Field(None, description="the checkpoint's evaluation at this dim")
    map_at_k: float | None = None
    exact_ms: float | None = Field(None, description="exact search at this dim, ms per query")
    adaptive_ms: float | None = Field(
        None, description="ANN shortlist at the ANN dim, exact rerank at this dim, ms per query"
    )


class DtypeInfo(BaseModel):
    dim: int
    dtype: str = Field(
        description="an output_dtype, or binary+rerank: a Hamming shortlist of 10 x k at this "
        "dim reranked by the full-dim float cosine"
    )
    bytes: int = Field(description="bytes per vector as sent (base64 decoded)")
    knn_top1: float | None = Field(None, description="the checkpoint's evaluation (eval.json)")
    map_at_k: float | None = None


class AnnInfo(BaseModel):
    factory: str
    dim: int
    min_rows: int = Field(description="the ANN serves default searches from this index size")
    default_nprobe: int
    default_ef_search: int
    default_shortlist_factor: int


class CalibrationInfo(BaseModel):
    """The index's measured settings: what `recall_target` chooses from."""

    k: int
    queries: int = Field(description="held-out items used as queries")
    rows: int = Field(description="live items when measured")
    measured: str
    cost_s: float = Field(description="seconds the calibration took")
    settings: list[CalibratedSetting]


class DimsInfo(BaseModel):
    """What a client needs to choose a dim by cost and accuracy."""

    dims: list[DimInfo]
    index_size: int | None
    store_dtype: str | None
    ann: AnnInfo | None
    eval_source: str | None = Field(None, description="the eval.json the quality came from")
    latency_measured: str | None = Field(None, description="when and on what the ms were timed")
    calibration: CalibrationInfo | None = Field(
        None, description="null: measured never (python -m index.calibrate FOLDER)"
    )
    dtypes: list[DtypeInfo] = Field(
        default_factory=list,
        description="per (dim, output type): bytes per vector and, where evaluated, quality",
    )


class Status(BaseModel):
    status: str


class ErrorBody(BaseModel):
    error: str
    detail: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorBody(BaseModel):
    """OpenAI's error shape, answered by the OpenAI-compatible routes."""

    error: OpenAIErrorDetail
