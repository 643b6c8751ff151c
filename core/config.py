"""`ModelConfig`: what rebuilds the served encoder and its preprocessing exactly as trained."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from core.cli import UsageError
from core.nesting import parse_nesting_list

Arch = Literal["convnet", "resnet18", "resnet50"]


def _nesting(v: object) -> list[int]:
    try:
        return parse_nesting_list(v)  # type: ignore[arg-type]
    except UsageError as e:
        raise ValueError(str(e)) from None


NestingList = Annotated[list[int], BeforeValidator(_nesting)]


class ModelConfig(BaseModel):
    """What rebuilds the encoder and its input preprocessing exactly as trained.

    Training writes it into the checkpoint; evaluation and the server read nothing else.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Arch
    nesting_list: NestingList
    image_size: int = Field(ge=16, le=512)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mlp_hidden: int = Field(ge=0)
    head_bn: bool

    @property
    def full_dim(self) -> int:
        return self.nesting_list[-1]
