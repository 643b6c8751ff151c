"""An ablation grid: named variants (trainer flag sets) x seeds, read from a TOML file."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.cli import UsageError


def _split_flags(v: object) -> object:
    """Flags as one shell-quoted string or as a list."""
    return shlex.split(v) if isinstance(v, str) else v


class Variant(BaseModel):
    """One row of the table. `of` + `eval`: score another variant's checkpoints differently
    (e.g. `--random-init`) instead of training."""

    model_config = ConfigDict(extra="forbid")

    train: list[str] = Field([], description="trainer flags on top of the grid's `common`")
    eval: list[str] = Field([], description="extra trainer.evaluate flags")
    of: str | None = Field(None, description="evaluate this variant's checkpoints, no training")
    default: bool = Field(False, description="marked as the chosen default in the table")
    note: str = ""

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _flags(cls, v: object) -> object:
        return _split_flags(v)


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    out: Path = Field(description="run folders, the table and the plot go here")
    seeds: list[int] = [0, 1, 2]
    dims: list[int] = Field([8, 16, 32, 64, 128, 256], description="dims scored (up to each width)")
    common: list[str] = Field([], description="trainer flags for every variant")
    eval_common: list[str] = Field([], description="trainer.evaluate flags for every variant")
    checkpoints: Path | None = Field(
        None,
        description="score the checkpoints another grid trained under this folder (its `out`; "
        "the same variants and `common`): nothing is trained, e.g. the test-split table of a "
        "grid tuned on the validation split",
    )
    reference: str | None = Field(None, description="variant the differences are taken against")
    variants: dict[str, Variant]

    @field_validator("common", "eval_common", mode="before")
    @classmethod
    def _flags(cls, v: object) -> object:
        return _split_flags(v)

    @model_validator(mode="after")
    def _check(self) -> Grid:
        if not self.variants:
            raise ValueError("no [variants.NAME] tables")
        names = set(self.variants)
        for name, v in self.variants.items():
            if not name.translate(str.maketrans("", "", "-_.")).isalnum() or name[0] == ".":
                raise ValueError(f"variant name {name!r}: use letters, digits, -, _ and .")
            if v.of is not None and (v.of not in names or self.variants[v.of].of is not None):
                raise ValueError(f"variant {name}: of = {v.of!r} is not a trained variant")
            if v.of is not None and v.train:
                raise ValueError(f"variant {name}: `of` evaluates, it cannot also set `train`")
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference = {self.reference!r} is not a variant")
        if not self.seeds:
            raise ValueError("seeds is empty")
        return self


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"grid {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"grid {path}: not valid TOML ({e})") from None
    try:
        return Grid(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise UsageError(f"grid {path}: {where + ': ' if where else ''}{msg}") from None
