"""`python -m index.calibrate FOLDER`: measure (again) a folder's recall table in place, e.g.
for a folder built before calibration existed (stop its writer first). index.calibration
has the measurement."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from index.calibration import QUERIES, calibrate, save
from index.store import IndexStore, read_manifest


def main(argv: list[str] | None = None) -> None:
    """`python -m index.calibrate FOLDER`: (re)calibrate a folder in place (stop its writer)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folder", type=Path)
    p.add_argument("--queries", type=int, default=QUERIES)
    a = p.parse_args(argv)
    manifest = read_manifest(a.folder)
    store = IndexStore(a.folder, manifest, writable=False)
    calibration = calibrate(store, queries=a.queries)
    save(store, calibration)
    store.close()
    best = {t: calibration.pick(t).model_dump() for t in (0.9, 0.95, 0.99)}
    print(json.dumps({"cost_s": calibration.cost_s, "settings": len(calibration.settings), **best}))


if __name__ == "__main__":
    main()
