"""`python -m index.calibrate FOLDER`: measure (again) a folder's recall table in place, e.g.
for a folder built before calibration existed, or on a sample of real queries (--queries-file,
kept in the folder for every later calibration); stop its writer first. index.calibration has
the measurement."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from index.calibration import QUERIES, calibrate, load_sample, save, save_sample
from index.store import IndexStore, read_manifest


def main(argv: list[str] | None = None) -> None:
    """`python -m index.calibrate FOLDER`: (re)calibrate a folder in place (stop its writer)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folder", type=Path)
    p.add_argument("--queries", type=int, default=QUERIES, help="how many queries to measure")
    p.add_argument(
        "--queries-file",
        type=Path,
        help="a .npy of query vectors [n, width] that are not index items (e.g. logged "
        "queries) to measure on, kept in the folder for later calibrations (compaction's); "
        "default: the kept sample, else held-out items",
    )
    a = p.parse_args(argv)
    manifest = read_manifest(a.folder)
    store = IndexStore(a.folder, manifest, writable=False)
    if a.queries_file is None:
        sample = load_sample(a.folder, manifest, store.width)
    else:
        sample = np.load(a.queries_file)
        if sample.ndim != 2 or sample.shape[1] != store.width:
            raise SystemExit(
                f"{a.queries_file} holds an array of shape {sample.shape}; expected [n, "
                f"{store.width}] query vectors at this index's full dim"
            )
        save_sample(store, sample[: a.queries])  # compaction's calibrations use it too
    calibration = calibrate(store, queries=a.queries, sample=sample)
    save(store, calibration)
    store.close()
    best = {t: calibration.pick(t).model_dump() for t in (0.9, 0.95, 0.99)}
    print(json.dumps({"cost_s": calibration.cost_s, "settings": len(calibration.settings), **best}))


if __name__ == "__main__":
    main()
