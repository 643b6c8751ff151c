"""bench/bench_gpu.py at toy sizes on the CPU: the GPU run's code path, end to end.

Its numbers mean nothing here (2 cores, a tiny CNN); what is checked is that every part runs,
writes the JSON the report reads, and that its ratios are the quotients they claim to be.
Part (c) (torch.compile) is left out: compiling on 2 cores takes many minutes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_profile_runs_every_part_and_writes_consistent_json(tmp_path):
    out = tmp_path / "gpu-smoke.json"
    argv = [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--profile", "smoke",
            "--parts", "a,b,d,e", "--workdir", str(tmp_path / "w"),
            "--output", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=580, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == {}
    a, b, d = r["a_ceiling"], r["b_end_to_end"], r["d_server"]
    rates = [a["images_per_s"], r["e_eval_extraction"]["images_per_s"]]
    for mode in ("pil", "device"):
        run = b[mode]
        rates += [run["images_per_s"], run["decode_stage"]["images_per_s"]]
        assert 0 <= run["data_wait_fraction"] < 1
        assert math.isclose(run["ratio_to_ceiling"], run["images_per_s"] / a["images_per_s"])
    rates += [d[k] for k in d if k.endswith("images_per_s")]
    assert all(x > 0 and math.isfinite(x) for x in rates), rates
    assert math.isclose(
        d["ratio_http_over_bare"], d["http_jpeg_images_per_s"] / d["bare_model_images_per_s"]
    )
    # the same JPEGs through the device path (on the CPU here) and PIL: identical pixels
    assert b["agreement"]["images"] > 0 and b["agreement"]["max_abs_diff"] == 0
    assert r["jpegs"]["images"] == r["config"]["images"]
    assert "(a) step ceiling" in proc.stdout and "goals (issue 14)" in proc.stdout
    assert "(c) compiled step ceiling" in proc.stdout  # shown as '-' when not run
