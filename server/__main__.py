"""`python -m server`: flags override MOCO_* env vars; load everything, then serve."""

from __future__ import annotations

import gc
import sys

import uvicorn

from core.cli import add_model_flags, build_model_from_args, make_parser, run_cli
from server.app import create_app
from server.service import Service
from server.settings import Settings

PROG = "python -m server"
# The event loop, the decode thread and the model thread share one GIL. At Python's default
# 5 ms switch interval, a thread that wants it back (a finished forward, a new request) waits
# up to 5 ms behind a busy one (docs/SERVING.md, Benchmarks).
GIL_SWITCH_INTERVAL_S = 0.0002


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(PROG, "Serve embeddings and nearest-neighbour search over HTTP.")
    add_model_flags(parser, Settings)
    settings = build_model_from_args(Settings, parser.parse_args(argv), PROG)
    assert isinstance(settings, Settings)
    service = Service(settings)  # a bad checkpoint or index is one line + exit 2, not a trace
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # torch, FastAPI and the model leave ~400k long-lived objects; a full collection scanned
    # them all, stopping every thread for ~150 ms a few times a minute under load (that was
    # /healthz's and the embed route's p99). Frozen, they are never scanned again.
    gc.collect()
    gc.freeze()
    app = create_app(settings, service)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=settings.access_log)
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
