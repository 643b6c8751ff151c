"""Where a server's CPU goes under load: py-spy samples `python -m server` while wrk drives
/v1/embed (one image per request), then prints the top functions by own and inclusive time.

    python bench/profile_server.py --model convnet --output docs/results/profile-after.txt

Needs `wrk` (apt-get install wrk) and `py-spy` (dev extra). Threads are sampled separately
(the model thread, the event loop, the worker threads), idle waits are left out.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_server import (
    MODELS,
    encoded_images,
    free_port,
    random_checkpoint,
    request_bodies,
    run_wrk,
    start_server,
    stop_server,
)


def frame_name(frame: str) -> str:
    """'handle (fastapi/routing.py:123)' -> 'handle (fastapi/routing.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path.split('/work/wt/')[-1]})"


def role(thread: str, frames: list[str]) -> str:
    """Which of the server's threads a stack is from (py-spy names them by thread name)."""
    joined = ";".join(frames)
    if "Runner.run (asyncio/runners.py)" in joined:
        return "event loop (HTTP, JSON, routing)"
    if "WorkerThread.run" in joined:
        return "anyio worker threads"
    if "decode_" in thread:
        return "batcher decode thread"
    if "model_" in thread:
        return "batcher model thread"
    if "concurrent/futures/thread.py" in joined:
        return "batcher thread pool (model, batch decode)"
    return "other"


def summarize(collapsed: str, top: int, sampled: str = "all threads, idle excluded") -> str:
    own, inclusive, roles = collections.Counter(), collections.Counter(), collections.Counter()
    loop_own = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        thread, *rest = stack.split(";")
        frames = [frame_name(f) for f in rest]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        where = role(thread, frames)
        roles[where] += n
        if where.startswith("event loop"):
            # the event loop's time by the first frame of ours or of a library's entry point
            ours = [f for f in frames if "server/" in f or "fastapi/" in f or "starlette/" in f]
            loop_own[ours[-1] if ours else frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"{total} samples ({sampled})", "", "by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {r}" for r, n in roles.most_common()]
    lines += ["", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "event loop, by innermost server/fastapi/starlette frame:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in loop_own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="convnet")
    p.add_argument("--body", choices=["json", "multipart"], default="json")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-runtime", choices=["torchscript", "eager"], default="torchscript")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (py-spy --gil)"
    )
    p.add_argument("--server-source", type=Path, help="profile this checkout's server code")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = random_checkpoint(args.model, work)
        spec = MODELS[args.model]
        _, files, _ = encoded_images(spec["image_size"], 64)
        request = request_bodies(files, args.body, spec["nesting_list"][-1])
        port = free_port()
        proc = start_server(checkpoint, args, port, work / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            run_wrk(url, request, args, 2, work)
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            record = ["record", "--pid", str(proc.pid), "--format", "raw", "--threads"]
            record += ["--gil"] if args.gil else []
            limits = ["--duration", str(int(args.seconds)), "--nonblocking"]
            spy = subprocess.Popen(
                [py_spy, *record, *limits, "--output", str(work / "stacks.txt")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            load = run_wrk(url, request, args, args.seconds + 1, work)
            spy.wait(60)
        finally:
            stop_server(proc)
        stacks = work / "stacks.txt"
        if not stacks.is_file():
            raise SystemExit(f"py-spy wrote nothing: {spy.stderr.read().decode()}")
        ips = (load["requests"] - load["non_2xx"]) / load["duration_s"]
        what = "the thread holding the GIL" if args.gil else "all threads"
        head = (
            f"{args.model} {args.body}: {ips:.0f} images/s under wrk -c{args.concurrency}; "
            f"py-spy sampled {what}\n"
        )
        sampled = "the GIL holder only" if args.gil else "all threads, idle excluded"
        text = head + summarize(stacks.read_text(), args.top, sampled)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
