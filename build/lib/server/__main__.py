"""`python -m server`: flags override MOCO_* env vars; load everything, then serve."""

from __future__ import annotations

import uvicorn

from server.app import create_app
from server.service import Service
from server.settings import Settings
from trainer.config import add_model_flags, build_model_from_args, make_parser
from trainer.errors import run_cli

PROG = "python -m server"


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(PROG, "Serve embeddings and nearest-neighbour search over HTTP.")
    add_model_flags(parser, Settings)
    settings = build_model_from_args(Settings, parser.parse_args(argv), PROG)
    assert isinstance(settings, Settings)
    service = Service(settings)  # a bad checkpoint or index is one line + exit 2, not a trace
    uvicorn.run(create_app(settings, service), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
