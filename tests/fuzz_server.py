"""`make fuzz`: Schemathesis against a real `python -m server` on 127.0.0.1, all checks on.

Trains a tiny checkpoint and indexes a few hundred shapes (about a minute on CPU), starts
the server with an API key on a free port, runs `st run` against its /openapi.json bounded
by examples and time, and reads the server's own request counters (/metrics) for the
status counts. Writes a JSON summary; exits non-zero on any 5xx or Schemathesis failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run(argv: list[str], **kw) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, cwd=ROOT, **kw)


def prepare(work: Path) -> Path:
    """A 2-step checkpoint and an index of 300 training images."""
    ckpt = work / "run" / "checkpoint.pt"
    if not ckpt.exists():
        run(
            [
                *(PY, "-m", "trainer.train", "--dataset", "shapes", "--arch", "convnet"),
                *("--output-dir", str(work / "run"), "--max-steps", "2", "--batch-size", "32"),
                *("--queue-size", "64", "--nesting-list", "8,16,32,64", "--device", "cpu"),
                *("--workers", "0", "--resume", "never", "--epochs", "1"),
                *("--cache-dir", str(work / "data")),
            ]
        )
    if not (work / "index" / "manifest.json").exists():
        run(
            [
                *(PY, "-m", "trainer.build_index", "--checkpoint", str(ckpt)),
                *("--dataset", "shapes", "--split", "train", "--out", str(work / "index")),
                *("--limit", "300", "--cache-dir", str(work / "data")),
            ]
        )
    return ckpt


def requests_by_status(url: str) -> Counter:
    """Requests counted by the server's /metrics, by (method, endpoint, status)."""
    counts: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "moco_requests_total":
                labels = sample.labels
                counts[labels["method"], labels["endpoint"], labels["status"]] += int(sample.value)
    return counts


def post_reach(counts: Counter) -> dict[str, float]:
    """Per POST endpoint, the share of generated requests a handler answered 2xx: the rest
    stopped at validation (a 4xx), so they did not fuzz the handler."""
    out = {}
    for endpoint in sorted({e for m, e, _ in counts if m == "POST"}):
        total = sum(n for (m, e, _), n in counts.items() if m == "POST" and e == endpoint)
        ok = sum(
            n for (m, e, s), n in counts.items() if m == "POST" and e == endpoint and s[0] == "2"
        )
        out[endpoint] = round(ok / total, 4) if total else 0.0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation")
    parser.add_argument("--max-time", type=int, default=120, help="seconds for `st run`")
    parser.add_argument("--workers", default="2", help="Schemathesis workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phases", default="examples,fuzzing", help="st phases (coverage is slow, unbounded)"
    )
    parser.add_argument("--work-dir", type=Path, help="reused between runs (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the JSON summary here")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="moco-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = prepare(work)
    port, key = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MOCO_API_KEY": key, "OMP_NUM_THREADS": "1"}
    log = open(work / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            *(PY, "-m", "server", "--checkpoint", str(ckpt), "--index-dir", str(work / "index")),
            *("--port", str(port), "--torch-threads", "1", "--faiss-threads", "1"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit((work / "server.log").read_text())
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.3)
        before = requests_by_status(url)
        st = [
            str(Path(PY).parent / "st"),
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            str(args.max_examples),
            "--max-time",
            str(args.max_time),
            "--workers",
            args.workers,
            "--seed",
            str(args.seed),
            "--phases",
            args.phases,
            "--request-timeout",
            "30",
            "--no-color",
        ]
        print("+ st run", url, flush=True)
        started = time.monotonic()
        hooks = {"SCHEMATHESIS_HOOKS": "fuzz_hooks", "PYTHONPATH": str(ROOT / "tests")}
        with open(work / "st.txt", "w") as out:
            code = subprocess.run(
                st, cwd=work, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **hooks}
            ).returncode
        elapsed = time.monotonic() - started
        output = (work / "st.txt").read_text()
        print(output[-6000:])
        after = requests_by_status(url)
    finally:
        server.terminate()
        server.wait(30)
        log.close()

    delta = Counter({k: after[k] - before.get(k, 0) for k in after})
    statuses: dict[str, int] = {}
    for (_, _, status), n in sorted(delta.items()):
        if n:
            statuses[status] = statuses.get(status, 0) + n
    total = sum(statuses.values())
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    errors = sum(n for s, n in statuses.items() if s.startswith("5") and s != "503")
    failures = re.findall(r"^\s*\d+\.\s+(.+)$", output, flags=re.M)
    summary = {
        "tool": subprocess.check_output([st[0], "--version"], text=True).strip(),
        "checks": "all",
        "max_examples_per_operation": args.max_examples,
        "max_time_s": args.max_time,
        "elapsed_s": round(elapsed, 1),
        "requests": total,
        "status_counts": statuses,
        "share_2xx": round(ok / total, 4) if total else 0.0,
        "post_2xx_share_by_endpoint": post_reach(delta),
        "responses_5xx_excluding_503": errors,
        "phases": args.phases,
        "st_exit_code": code,
        "st_summary": output.strip().splitlines()[-12:],
        "failures": failures,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if errors or code else 0


if __name__ == "__main__":
    sys.exit(main())
