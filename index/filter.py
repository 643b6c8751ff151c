"""The filter grammar of a search: which items may be returned, checked before any search runs.

A filter is a tree of conditions on an item's `label` or a top-level `metadata` key, joined by
`and`, `or` and `not`:

    {"and": [{"field": "label", "eq": "shoe"},
             {"field": "metadata.price", "range": {"lt": 50}},
             {"not": {"field": "metadata.brand", "in": ["acme", "bolt"]}}]}

Leaves: `eq` (one value), `in` (any of up to MAX_IN_VALUES values), `range` (gt/gte/lt/lte on
numbers). Values are strings, numbers or booleans; a number equals the same number whether
stored as 1 or 1.0; `true` never equals 1. An item without the field, or whose value is an
array or object, matches no leaf (and so matches `not` of it). The tree is bounded (depth,
leaves, list sizes) before pydantic parses it, so a hostile body costs a walk, not a
recursion; what is not supported is refused with a 422 naming what is.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    model_validator,
)

MAX_DEPTH = 6  # nested and/or/not levels, the leaves included
MAX_LEAVES = 64  # conditions in one filter
MAX_BRANCHES = 32  # entries of one and/or list
MAX_IN_VALUES = 1024
MAX_VALUE_CHARS = 256
MAX_KEY_CHARS = 128
FIELD_PATTERN = r"^(label|metadata\..{1,128})$"

Scalar = Annotated[
    StrictBool | StrictInt | StrictFloat | Annotated[str, Field(max_length=MAX_VALUE_CHARS)],
    Field(description="a string, number or boolean"),
]
Number = StrictInt | StrictFloat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Range(_Strict):
    """Bounds on a numeric field; at least one."""

    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Range:
        if all(v is None for v in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        if self.gt is not None and self.gte is not None:
            raise ValueError("give gt or gte, not both")
        if self.lt is not None and self.lte is not None:
            raise ValueError("give lt or lte, not both")
        return self


class Condition(_Strict):
    """One test on one field: exactly one of `eq`, `in`, `range`."""

    field: str = Field(
        pattern=FIELD_PATTERN,
        max_length=9 + MAX_KEY_CHARS,
        description='"label" or "metadata.<key>" (a top-level metadata key)',
    )
    eq: Scalar | None = None
    in_: list[Scalar] | None = Field(None, alias="in", min_length=1, max_length=MAX_IN_VALUES)
    range: Range | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = (("eq", self.eq), ("in", self.in_), ("range", self.range))
        given = [name for name, value in tests if value is not None]
        if len(given) != 1:
            raise ValueError(
                f"a condition on {self.field!r} needs exactly one of eq, in, range"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def key(self) -> str:
        """The payload column: "label" or the metadata key."""
        return "label" if self.field == "label" else self.field.removeprefix("metadata.")


class And(_Strict):
    and_: list[Filter] = Field(alias="and", min_length=1, max_length=MAX_BRANCHES)


class Or(_Strict):
    or_: list[Filter] = Field(alias="or", min_length=1, max_length=MAX_BRANCHES)


class Not(_Strict):
    not_: Filter = Field(alias="not")


def _kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return type(value).__name__.lower()
    if not isinstance(value, dict):
        return None
    ops = [k for k in ("and", "or", "not") if k in value]
    if len(ops) == 1:
        return ops[0]
    if not ops and "field" in value:
        return "condition"
    return None


def check_bounds(value: Any) -> Any:
    """Walk the raw JSON (iteratively) and refuse trees past the bounds before parsing them;
    a JSON string (a multipart form field) is parsed first."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("filter is not valid JSON") from None
    if value is None or isinstance(value, BaseModel):
        return value
    leaves, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"filter nests deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict):
            continue  # pydantic names the wrong type
        for op in ("and", "or"):
            if isinstance(node.get(op), list):
                if len(node[op]) > MAX_BRANCHES:
                    raise ValueError(f"an `{op}` holds more than {MAX_BRANCHES} filters")
                stack.extend((child, depth + 1) for child in node[op])
        if "not" in node:
            stack.append((node["not"], depth + 1))
        if "field" in node:
            leaves += 1
            if leaves > MAX_LEAVES:
                raise ValueError(f"filter holds more than {MAX_LEAVES} conditions")
    return value


Filter = Annotated[
    Annotated[And, Tag("and")]
    | Annotated[Or, Tag("or")]
    | Annotated[Not, Tag("not")]
    | Annotated[Condition, Tag("condition")],
    Discriminator(
        _kind,
        custom_error_type="filter_node",
        custom_error_message="a filter node is {'and': [...]}, {'or': [...]}, {'not': {...}} "
        "or a condition {'field': 'label' | 'metadata.<key>', 'eq' | 'in' | 'range': ...}",
    ),
]
for _model in (And, Or, Not):
    _model.model_rebuild()

BoundedFilter = Annotated[
    Filter,
    BeforeValidator(check_bounds),
    Field(
        description=f"items to search among: conditions on `label` or `metadata.<key>` (eq, in, "
        f"range) joined by and/or/not; at most {MAX_DEPTH} levels and {MAX_LEAVES} conditions "
        "(docs/SEARCH.md, Filters)"
    ),
]


def leaves(node: Filter) -> list[Condition]:
    """Every condition of the tree."""
    if isinstance(node, Condition):
        return [node]
    if isinstance(node, Not):
        return leaves(node.not_)
    children = node.and_ if isinstance(node, And) else node.or_
    return [c for child in children for c in leaves(child)]
