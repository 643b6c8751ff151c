"""A recall target instead of knobs: the index measures, on its own items, what each search
setting (shortlist dim, shortlist, nprobe / ef_search) achieves, and a request asking for
`recall_target` gets the cheapest setting that met it.

Calibration runs when a generation is written with enough rows (build, compaction) or on
demand (`python -m index.calibrate FOLDER`): QUERIES items held out as queries (their own row
dropped from every answer, so each asks "what else is near this item"), exact top-k at the
full dim as truth, then every setting of the grid is scored (recall@k) and timed (batch 1).
The table always ends with exact search at the full dim (recall 1 by definition), so every
target in (0, 1] has an answer and none is met by silently losing recall. It is saved as
calibration-<g>.json, named by the manifest; folders from before it have none (the server
answers 422 naming `python -m index.calibrate FOLDER`, index/calibrate.py). A query sample given
to the CLI is kept in the folder (calibration-queries.npy, named by the manifest) and every later
calibration, compaction's included, measures on it instead of on items. `calibrate` takes
the store by its attributes (no import of index.store, which calls it at compaction).
"""

from __future__ import annotations

import logging
import time
from itertools import groupby
from pathlib import Path

import faiss
import numpy as np
from pydantic import BaseModel, Field

from core.atomic import atomic_write
from index.folder import publish_manifest
from index.plan import SearchKnobs, SearchPlan
from index.search import rerank_prefixes, scan_top_k

QUERIES = 200  # held-out items scored per setting (recall)
TIMED = 20  # of those, timed at batch 1 per setting
K = 10
MIN_ROWS = 1000  # below this only exact search is listed: it is a few ms
SHORTLISTS = (20, 50, 100, 200, 500, 1000, 2000, 4000)
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
ENOUGH = 0.999  # a knob's larger shortlists are skipped once one's lower bound reaches this
EF_SEARCHES = (16, 32, 64, 128, 256, 512)
SAMPLE_FILE = "calibration-queries.npy"
log = logging.getLogger("index.calibration")


class Setting(BaseModel):
    """One measured way to search: a funnel (dim -> rerank_dim) or exact at `dim`."""

    dim: int
    rerank_dim: int | None = None
    shortlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    use_ann: bool = False
    recall: float = Field(description=f"recall@{K} against exact full-dim search")
    recall_low: float = Field(
        description="one-sided 95% lower bound of `recall` (mean - 1.645 standard errors over "
        "the queries): what a target is checked against"
    )
    ms: float = Field(description="ms per query at batch 1, on the calibrating machine")

    def plan(self, k: int) -> SearchPlan:
        return SearchPlan(
            k=k,
            dim=self.dim,
            rerank_dim=self.rerank_dim,
            shortlist=self.shortlist,
            knobs=SearchKnobs(nprobe=self.nprobe, ef_search=self.ef_search),
            use_ann=self.use_ann if self.rerank_dim is not None else None,
        )


class Calibration(BaseModel):
    """The measured table and how it was measured; `pick` answers a recall target."""

    k: int
    queries: int
    held_out: bool = Field(
        False, description="measured on query vectors given to it, not on the index's items"
    )
    rows: int = Field(description="live items when measured")
    measured: str
    cost_s: float = Field(description="seconds the calibration took")
    settings: list[Setting]

    def pick(self, target: float) -> Setting:
        """The fastest setting whose recall meets `target` with 95% confidence: its lower
        bound does (200 queries measure a recall of 0.99 to about +-0.004; held-out queries
        came out that much lower without it), and no sample certifies more than
        1 - 3 / (queries x k) (the rule of three: 0.9985 here), so targets above that are
        answered by exact search, the last row."""
        ceiling = 1 - 3 / (self.queries * self.k)
        meeting = [
            s
            for s in self.settings
            if (s is self.settings[-1] and s.recall_low >= target)
            or min(s.recall_low, ceiling) >= target
        ]
        return min(meeting, key=lambda s: (s.ms, -s.recall))


def _grid(store) -> list[dict]:
    """The settings worth measuring on this index."""
    width, ann = store.width, store.ann
    out: list[dict] = []
    if ann is not None and ann.dim < width and not ann.binary:
        ivf = faiss.try_extract_index_ivf(ann.index)
        if ivf is not None:
            knobs = [{"nprobe": p} for p in NPROBES if p <= ivf.nlist]
        elif hasattr(ann.index, "hnsw"):
            knobs = [{"ef_search": e} for e in EF_SEARCHES]
        else:
            knobs = [{}]
        for kn in knobs:
            for s in SHORTLISTS:
                out.append(
                    {"dim": ann.dim, "rerank_dim": width, "shortlist": s, "use_ann": True, **kn}
                )
    else:
        nesting = [int(d) for d in store.manifest.get("nesting_list") or [] if int(d) < width]
        for d in nesting[:3]:
            for s in SHORTLISTS:
                out.append({"dim": d, "rerank_dim": width, "shortlist": s, "use_ann": False})
    return out


def _recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean recall over the queries and its one-sided 95% lower bound."""
    pairs = zip(found, truth, strict=True)
    per_query = np.array([len(set(f[f >= 0]) & set(t[t >= 0])) / len(t) for f, t in pairs])
    mean = float(per_query.mean())
    error = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0
    return round(mean, 4), round(max(0.0, mean - 1.645 * error), 4)


def _without_own(rows: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's results with the query's own row removed, first k kept."""
    out = np.full((len(rows), k), -1, np.int64)
    for i, (r, o) in enumerate(zip(rows, own, strict=True)):
        kept = r[r != o][:k]
        out[i, : len(kept)] = kept
    return out


def calibrate(
    store,
    *,
    queries: int = QUERIES,
    timed: int = TIMED,
    k: int = K,
    sample: np.ndarray | None = None,
) -> Calibration:
    """Measure the grid on `store` (an IndexStore); holds its lock throughout. `sample`: query
    vectors that are not index items (e.g. logged queries) to measure on instead of held-out
    items: an item sits where the ANN put it, a new query does not, and recall can differ."""
    start = time.perf_counter()
    with store.lock:
        live = store.vectors.live_rows()
        if sample is None:
            rng = np.random.default_rng(0)
            own = np.sort(rng.choice(live, size=min(len(live), queries), replace=False))
            q = store.vectors.rows[own]
        else:
            q = np.asarray(sample[:queries], dtype=np.float32)
            own = np.full(len(q), -1)  # nothing to drop: no query is an item
        width = store.width
        exclude = store.vectors.dead if store.vectors.n_dead else None
        settings = []
        if len(live) > k:
            _, truth = scan_top_k(store.vectors.rows, q, k + 1, width, exclude=exclude)
            truth = _without_own(truth, own, k)
            grid = _grid(store) if len(live) >= MIN_ROWS else []
            for _, specs in groupby(grid, key=_knob):
                settings += _measure(store.vectors, list(specs), q, own, truth, k, timed)
        exact = Setting(dim=width, recall=1.0, recall_low=1.0, ms=0.0)
        exact.ms = _ms(lambda x: store.vectors.search(x, exact.plan(k + 1)), q[: min(timed, 3)])
        settings.append(exact)
    return Calibration(
        k=k,
        queries=len(own),
        held_out=sample is not None,
        rows=len(live),
        measured=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        cost_s=round(time.perf_counter() - start, 3),
        settings=settings,
    )


def _knob(spec: dict) -> tuple:
    return spec["dim"], spec.get("nprobe"), spec.get("ef_search")


def _measure(vectors, specs: list[dict], q, own, truth, k: int, timed: int) -> list[Setting]:
    """One knob's shortlists, smallest first, until one's lower bound reaches ENOUGH. An IVF's
    (or an exact) top s is the first s of its top S, so one shortlist search at the largest S
    and one scoring of its candidates give every shortlist's answer (at 10M rows that is most
    of the cost); HNSW widens its search with the shortlist, so it is searched per shortlist.
    Times are always the real search's."""
    settings = [Setting(**spec, recall=0.0, recall_low=0.0, ms=0.0) for spec in specs]
    plans = [s.plan(k + 1) for s in settings]
    answers = None
    if specs[0].get("ef_search") is None:
        sizes = [p.shortlist_size(len(vectors)) for p in plans]
        candidates, _ = vectors.shortlist(q, plans[-1])
        found = rerank_prefixes(vectors.rows, q, candidates, k + 1, plans[-1].final_dim, sizes)
        answers = [found[size][1] for size in sizes]
    out = []
    for i, (setting, plan) in enumerate(zip(settings, plans, strict=True)):
        rows = answers[i] if answers is not None else vectors.search(q, plan)[1]
        setting.recall, setting.recall_low = _recall(_without_own(rows, own, k), truth)
        setting.ms = _ms(lambda x, plan=plan: vectors.search(x, plan), q[:timed])
        out.append(setting)
        if setting.recall_low >= ENOUGH:
            break
    return out


def _ms(run, q: np.ndarray) -> float:
    if len(q) == 0:
        return 0.0
    run(q[:1])  # warm
    start = time.perf_counter()
    for i in range(len(q)):
        run(q[i : i + 1])
    return round(1000 * (time.perf_counter() - start) / len(q), 4)


def file_name(generation: int) -> str:
    return f"calibration-{generation}.json"


def save(store, calibration: Calibration) -> None:
    """Write the table for the store's generation and name it in the manifest."""
    name = file_name(int(store.manifest["generation"]))
    text = calibration.model_dump_json(indent=1).encode()
    atomic_write(store.directory / name, lambda f: f.write(text))
    store.manifest = {**store.manifest, "calibration": name}
    publish_manifest(store.directory, store.manifest)


def save_sample(store, sample: np.ndarray) -> None:
    """Keep the query sample beside the folder's tables: later calibrations measure on it."""
    data = np.ascontiguousarray(sample, dtype=np.float32)
    atomic_write(store.directory / SAMPLE_FILE, lambda f: np.save(f, data))
    store.manifest = {**store.manifest, "calibration_queries": SAMPLE_FILE}
    publish_manifest(store.directory, store.manifest)


def load_sample(directory: Path, manifest: dict, width: int) -> np.ndarray | None:
    """The kept query sample, or None (none kept; one unreadable is logged, and items used)."""
    name = manifest.get("calibration_queries")
    if not name:
        return None
    try:
        sample = np.load(Path(directory) / name, allow_pickle=False)
        if sample.ndim != 2 or sample.shape[1] != width:
            raise ValueError(f"shape {sample.shape}, not [n, {width}]")
        return sample
    except (OSError, ValueError) as e:
        log.warning("%s/%s is unreadable (%s): calibrating on items", directory, name, e)
        return None


def load(directory: Path, manifest: dict) -> Calibration | None:
    """The generation's table, or None (a folder calibrated never, or damaged: recalibrate)."""
    name = manifest.get("calibration")
    if not name:
        return None
    try:
        return Calibration.model_validate_json((Path(directory) / name).read_bytes())
    except (OSError, ValueError):
        return None
