"""The (dim x output type) quality rows of `python -m trainer.evaluate`."""

from __future__ import annotations

import json

import numpy as np

from core.quantize import OUTPUT_DTYPES, fit_calibration
from trainer.evaluate.cli import Embedded, evaluate_embeddings, main
from trainer.evaluate.dtypes import FUNNEL, score_dtypes
from trainer.evaluate.report import dtype_table

DIMS = [8, 16, 32]


def clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four labelled clusters in 32 dims, energy decaying along the dims."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((4, 32))
    y = rng.integers(0, 4, n)
    x = (centres[y] + 0.8 * rng.standard_normal((n, 32))) / np.sqrt(1 + np.arange(32))
    return x.astype(np.float32), y


def test_every_pair_is_scored_with_its_bytes():
    (tx, ty), (qx, qy) = clusters(400, 0), clusters(100, 1)
    rows = score_dtypes(tx, ty, qx, qy, DIMS, fit_calibration(tx, DIMS))
    assert [(r["dim"], r["dtype"]) for r in rows] == [
        (d, t) for d in DIMS for t in (*OUTPUT_DTYPES, FUNNEL)
    ]
    by = {(r["dim"], r["dtype"]): r for r in rows}
    assert by[(16, "float")]["bytes"] == 64 and by[(16, "float16")]["bytes"] == 32
    assert by[(16, "int8")]["bytes"] == 16 and by[(16, "binary")]["bytes"] == 2
    floats = evaluate_embeddings(Embedded(tx, ty, qx, qy), DIMS)
    for d, f in zip(DIMS, floats, strict=True):
        assert by[(d, "float")]["knn_top1"] == f["knn_top1"]  # the same search as eval's
        assert abs(by[(d, "int8")]["map_at_k"] - f["map_at_k"]) < 0.02
        assert by[(d, "int8")]["map_at_k"] == by[(d, "uint8")]["map_at_k"]
        assert by[(d, "binary")]["knn_top1"] == by[(d, "ubinary")]["knn_top1"]
        # the rerank recovers what the sign bits lose
        assert by[(d, FUNNEL)]["map_at_k"] >= by[(d, "binary")]["map_at_k"] - 1e-9
    assert "binary + float rerank" in dtype_table({"dtypes": rows})


def test_eval_json_holds_the_rows(tmp_path):
    (tx, ty), (qx, qy) = clusters(200, 2), clusters(50, 3)
    npz = tmp_path / "e.npz"
    np.savez(npz, train_x=tx, train_y=ty, test_x=qx, test_y=qy)
    out = tmp_path / "eval.json"
    main(["--embeddings", str(npz), "--output", str(out), "--no-plot", "--threads", "1"])
    result = json.loads(out.read_text())
    assert result["int8_calibration"] == "fitted on the bank"
    assert len(result["dtypes"]) == 3 * 7  # default dims 8, 16, 32 x six types + the funnel
