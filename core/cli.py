"""The CLI convention every entry point shares: bad input is one line and exit code 2, and
flags are generated from a pydantic model's fields."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable
from typing import Literal, NoReturn

from pydantic import BaseModel, ValidationError


class UsageError(Exception):
    """A problem the user can fix (bad flag, missing file, foreign checkpoint...)."""


def exit_usage(message: str, prog: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(main: Callable[[list[str] | None], int | None], prog: str) -> None:
    """Run a CLI main; UsageError becomes one line on stderr and exit code 2."""
    try:
        code = main(None)
    except UsageError as e:
        exit_usage(str(e), prog)
    raise SystemExit(code or 0)


def _flag_type(annotation: object) -> tuple[object, tuple[str, ...] | None]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str, tuple(str(a) for a in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(args[0])
    return annotation, None


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (plus exit code 2), no usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One --kebab-case flag per field; values are validated by pydantic afterwards."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        typ, choices = _flag_type(field.annotation)
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        suffix = "" if field.is_required() else f" (default: {shown})"
        help_ = f"{field.description or ''}{suffix}".strip()
        if typ is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        else:
            parser.add_argument(
                flag, dest=name, choices=choices, default=None, metavar=name.upper(), help=help_
            )


def build_model_from_args(model: type[BaseModel], ns: argparse.Namespace, prog: str) -> BaseModel:
    values = {k: v for k, v in vars(ns).items() if k in model.model_fields and v is not None}
    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:  # a whole-config check names its flags itself
            msg = "--" + str(err["loc"][0]).replace("_", "-") + ": " + msg
        raise UsageError(msg) from None


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return _OneLineParser(prog=prog, description=description)
