"""Search at scale: ANN shortlist at a small Matryoshka dim + exact rerank vs exact full-dim.

    python bench/bench_search.py --data synthetic --n 1000000 --width 2048 \
        --out docs/results/search-synthetic.json --serve "IVF1024,Flat@64"
    python bench/bench_search.py --data real --n 1000000 --checkpoint C --prepare-only
    python bench/bench_search.py --data real --n 1000000 --checkpoint C --out R.json
    python bench/bench_search.py --data real ... --threshold "IVF1024,Flat@32"
    python bench/bench_search.py --data real ... --index-out DIR --index-ann "IVF1024,Flat@32"
    python bench/bench_search.py --plot docs/results/search-*.json

For each index type (FAISS factory string), shortlist dim, shortlist size and nprobe /
ef_search: ms/query at batch 1 and batch 64, recall@10 against exact full-dim search, build
time. Exact full-dim flat (IndexFlatIP, float32, in RAM) is the baseline; at N x D too large
to hold here it is timed on a slice and scaled linearly (a flat scan is linear in N; the
JSON records the slice). The chosen config is then served from an index folder by
index.store in a fresh process whose resident memory is reported (VmRSS, anon and file).
Vectors live in a memory-mapped store (float16 by default), generated or embedded chunk by
chunk into `--work-dir`, so no stage holds N x D floats in RAM. Stages are cached there.
`--threshold` times the server's exact and ANN shortlists at a few index sizes (where
MOCO_ANN_MIN_ROWS belongs); `--index-out` publishes the real store as a server index folder
(for bench/search_curl_session.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from common import write_result
from tqdm import tqdm

from core.nesting import truncate_normalize_np
from index.ann import AnnIndex, build_ann
from index.plan import SearchKnobs, SearchPlan
from index.search import rerank

K = 10
SCAN_ROWS = 1 << 22  # elements per chunk of an exact scan: bounded memory


# data -------------------------------------------------------------------------------------


def synthetic_rows(rng, centres, n, alpha, noise):
    """Matryoshka-like rows: cluster centre + noise, coordinate j scaled by (1 + j)^-alpha.

    The decaying scale puts most of the energy (and of the neighbour structure) in the
    leading coordinates, as Matryoshka training does; the tail still reorders neighbours.
    """
    width = centres.shape[1]
    scale = (1.0 + np.arange(width, dtype=np.float32)) ** -alpha
    labels = rng.integers(0, len(centres), n)
    x = centres[labels] + noise * rng.standard_normal((n, width), dtype=np.float32)
    return x * scale, labels


def make_synthetic(work: Path, n: int, width: int, n_queries: int, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), width), dtype=np.float32)
    store = np.lib.format.open_memmap(work / "store.npy", "w+", dtype=dtype, shape=(n, width))
    chunk = 16384
    bar = tqdm(total=n, desc="synthetic rows", unit="row")
    for start in range(0, n, chunk):
        x, _ = synthetic_rows(rng, centres, min(chunk, n - start), 0.75, 0.8)
        store[start : start + len(x)] = x
        bar.update(len(x))
    bar.close()
    store.flush()
    queries, _ = synthetic_rows(rng, centres, n_queries, 0.75, 0.8)
    np.save(work / "queries.npy", queries.astype(np.float32))
    np.save(work / "labels.npy", np.zeros(n, np.int16))


def make_real(work: Path, checkpoint: Path, n: int, n_queries: int, dtype: str, seed: int):
    """Embed n generated `shapes` images (and held-out queries) with the checkpoint."""
    import torch

    from core.checkpoint import load_checkpoint
    from core.encoder import load_encoder
    from core.preprocess import EvalPreprocess
    from trainer.data import shapes

    ckpt = load_checkpoint(checkpoint)
    encoder = load_encoder(ckpt, torch.device("cpu"))
    pre = EvalPreprocess.of(ckpt.model)
    size, width = ckpt.model.image_size, ckpt.model.full_dim

    def embed(images: np.ndarray, batch: int = 512) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            x = torch.stack([pre(img) for img in images[start : start + batch]])
            with torch.inference_mode():
                out.append(encoder(x).float().numpy())
        return np.concatenate(out)

    store = np.lib.format.open_memmap(work / "store.npy", "w+", dtype=dtype, shape=(n, width))
    labels = np.lib.format.open_memmap(work / "labels.npy", "w+", dtype=np.int16, shape=(n,))
    chunk = 4096
    bar = tqdm(total=n, desc="generate + embed shapes", unit="img", smoothing=0.05)
    for i, start in enumerate(range(0, n, chunk)):
        images, y = shapes.generate(min(chunk, n - start), size, seed=1_000_000 + seed + i)
        store[start : start + len(y)] = embed(images)
        labels[start : start + len(y)] = y
        bar.update(len(y))
    bar.close()
    store.flush()
    labels.flush()
    images, _ = shapes.generate(n_queries, size, seed=999_999)
    np.save(work / "queries.npy", embed(images))


def exact_top_k(store: np.ndarray, queries: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Exact top-k row ids at `dim` by a chunked scan of the store (the ground truth)."""
    q = truncate_normalize_np(queries, dim)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    step = max(1, SCAN_ROWS // dim)
    for start in tqdm(range(0, len(store), step), desc=f"exact top-{k} at {dim}"):
        x = truncate_normalize_np(store[start : start + step, :dim], dim)
        s = np.concatenate([best_s, q @ x.T], axis=1)
        ids = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, start + len(x)), (len(q), len(x)))], 1
        )
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(ids, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


# timing -----------------------------------------------------------------------------------


def per_query_ms(fn, queries: np.ndarray, batch: int, budget_s: float = 4.0) -> float:
    """Mean ms per query over batches of `batch` (at least one batch, about budget_s)."""
    batch = min(batch, len(queries))
    fn(queries[:batch])
    done, start = 0, time.perf_counter()
    while True:
        for b in range(0, len(queries) - batch + 1, batch):
            fn(queries[b : b + batch])
            done += batch
            if time.perf_counter() - start > budget_s:
                return 1000 * (time.perf_counter() - start) / done
        if done >= len(queries):
            return 1000 * (time.perf_counter() - start) / done


def exact_baseline(store: np.ndarray, queries: np.ndarray, slice_rows: int) -> dict:
    """ms/query of exact full-dim IndexFlatIP (float32 in RAM), scaled from a slice if needed."""
    n, width = store.shape
    rows = min(n, slice_rows)
    index = faiss.IndexFlatIP(width)
    for start in range(0, rows, 65536):
        index.add(truncate_normalize_np(store[start : min(rows, start + 65536)], width))
    q = truncate_normalize_np(queries, width)
    out = {"measured_rows": rows, "scale": n / rows}
    for batch, budget in ((1, 6.0), (64, 6.0)):
        ms = per_query_ms(lambda x: index.search(x, K), q, batch, budget)
        out[f"ms_b{batch}"] = ms * n / rows
    index.reset()  # free the slice before the grid
    return out


# the grid ---------------------------------------------------------------------------------


def parse_grid(spec: str, nprobes=(16, 64, 128, 256), efs=(64, 128, 256)) -> list[dict]:
    """'HNSW32@32;IVF1024,Flat@32;BFlat@256': factory@dim entries; knobs swept per kind."""
    out = []
    for entry in filter(None, spec.split(";")):
        factory, _, dim = entry.rpartition("@")
        if "HNSW" in factory:
            knobs = [{"ef_search": e} for e in efs]
        elif "IVF" in factory:
            knobs = [{"nprobe": p} for p in nprobes]
        else:
            knobs = [{}]
        out.append({"factory": factory, "dim": int(dim), "knobs": knobs})
    return out


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def ann_file(work: Path, factory: str, dim: int) -> Path:
    return work / f"ann-{factory.replace(',', '_')}@{dim}.faiss"


def run_grid(store, queries, truth, grid, shortlists, base_ms, train_size, work) -> list[dict]:
    """Builds each ANN from the store's memory map (as trainer.build_index does); reranks read the
    stored rows as the server does (index.rowfile: pread, nothing left mapped)."""
    from index.rowfile import RowFile
    from index.vectors import Rows

    bank = Rows(RowFile(work / "store.npy"), store.shape[1])
    rows = []
    for entry in grid:
        t0 = time.perf_counter()
        ann = build_ann(entry["factory"], entry["dim"], store, train_size=train_size)
        build_s = time.perf_counter() - t0
        ann.save(ann_file(work, entry["factory"], entry["dim"]))
        print(f"built {entry['factory']} at {entry['dim']}: {build_s:.1f} s", flush=True)
        for knobs in entry["knobs"]:
            for shortlist in shortlists:
                kn = SearchKnobs(**knobs)
                if kn.ef_search is not None and kn.ef_search < shortlist // 4:
                    continue

                def run(q, ann=ann, kn=kn, shortlist=shortlist):
                    _, cand = ann.search(q, shortlist, kn)
                    return rerank(bank, q, cand, K, store.shape[1])[1]

                found = np.concatenate(
                    [run(queries[i : i + 64]) for i in range(0, len(queries), 64)]
                )
                row = {
                    "factory": entry["factory"],
                    "dim": entry["dim"],
                    **knobs,
                    "shortlist": shortlist,
                    "recall_at_10": recall(found, truth),
                    "ms_b1": per_query_ms(run, queries, 1, 3.0),
                    "ms_b64": per_query_ms(run, queries, 64, 3.0),
                    "build_s": build_s,
                    "index_bytes": index_bytes(ann),
                }
                row["speedup_b1"] = base_ms["ms_b1"] / row["ms_b1"]
                row["speedup_b64"] = base_ms["ms_b64"] / row["ms_b64"]
                print(json.dumps(row), flush=True)
                rows.append(row)
        del ann
    return rows


def index_bytes(ann) -> int:
    writer = faiss.VectorIOWriter()
    if ann.binary:
        faiss.write_index_binary(ann.index, writer)
    else:
        faiss.write_index(ann.index, writer)
    return int(writer.data.size())


def best(rows: list[dict], min_recall: float = 0.99) -> dict | None:
    ok = [r for r in rows if r["recall_at_10"] >= min_recall]
    return max(ok, key=lambda r: r["speedup_b1"]) if ok else None


# serving memory ---------------------------------------------------------------------------


def serve_folder(work: Path, factory: str, dim: int, info: dict, n_train: int) -> Path:
    """An index folder over the bench's store, as index.store reads it: the store file and
    the grid's saved ANN are hard-linked in (no copy), items and manifest written."""
    from core.atomic import atomic_write
    from index.store import FORMAT

    store = np.load(work / "store.npy", mmap_mode="r")
    labels = np.load(work / "labels.npy", mmap_mode="r")
    folder = work / "index"
    folder.mkdir(exist_ok=True)
    for name, src in (
        ("vectors-0.npy", work / "store.npy"),
        ("ann-0.faiss", ann_file(work, factory, dim)),
    ):
        (folder / name).unlink(missing_ok=True)
        os.link(src, folder / name)
    with open(folder / "items-0.jsonl", "w") as f:
        for i in range(len(store)):
            f.write(f'{{"id":"s-{i}","label":{int(labels[i])},"metadata":null}}\n')
    manifest = {
        **info,
        "store_dtype": str(store.dtype),
        "ann": {"factory": factory, "dim": dim, "train_size": n_train, "file": "ann-0.faiss"},
        "format": FORMAT,
        "width": int(store.shape[1]),
        "count": len(store),
        "generation": 0,
        "vectors": "vectors-0.npy",
        "items": "items-0.jsonl",
        "wal": "wal-0.jsonl",
    }
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(folder / "manifest.json", lambda f: f.write(text))
    return folder


def publish_real_index(a, work: Path, out: Path) -> None:
    """The real-embedding store as a server index folder (`python -m server --index-dir`),
    through trainer.build_index.publish_index: the ANN of --index-ann and dims.json, as a build of
    the same vectors would write them."""
    from core.checkpoint import load_checkpoint
    from index.publish import SearchBuild, publish_index
    from trainer.build_index import default_eval_json
    from trainer.data import shapes

    ckpt = load_checkpoint(a.checkpoint)
    store = np.load(work / "store.npy", mmap_mode="r")
    labels = np.load(work / "labels.npy", mmap_mode="r")
    n, width = store.shape
    if width != ckpt.model.full_dim:
        raise SystemExit(
            f"{work} holds {width}-dim vectors, {a.checkpoint} embeds at {ckpt.model.full_dim}"
        )
    factory, _, dim = a.index_ann.rpartition("@")
    items = (
        {"id": f"gen-{i}", "label": int(y), "metadata": {"class": shapes.CLASSES[int(y)]}}
        for i, y in enumerate(labels.tolist())
    )
    chunks = (store[i : i + 65536].astype(np.float32) for i in range(0, n, 65536))
    info = {
        "checkpoint": str(a.checkpoint),
        "fingerprint": ckpt.fingerprint,
        "step": ckpt.step,
        "nesting_list": list(ckpt.model.nesting_list),
        "dataset": f"shapes, {n} generated by bench/bench_search.py (seed 0)",
        "split": "generated",
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    search = SearchBuild(
        store_dtype=str(store.dtype),
        shortlist_dim=int(dim),
        index_factory=factory,
        train_size=a.train_size,
        eval_json=default_eval_json(a.checkpoint),
    )
    t0 = time.perf_counter()
    publish_index(out, width, n, chunks, items, info, search, ckpt.model.nesting_list)
    print(f"published {out} in {time.perf_counter() - t0:.0f} s", flush=True)


def serving_rss(folder: Path, queries_path: Path, row: dict, width: int) -> dict:
    """Open the index folder as the server does, in a fresh process; search; report memory."""
    code = f"""
import json, time, numpy as np
from index.store import IndexStore, read_manifest
from index.plan import SearchKnobs, SearchPlan
from pathlib import Path
m = read_manifest(Path({str(folder)!r}))
store = IndexStore.open({str(folder)!r}, m['fingerprint'], {width}, writable=False)
q = np.load({str(queries_path)!r})
kn = SearchKnobs(nprobe={row.get("nprobe")!r}, ef_search={row.get("ef_search")!r})
t = time.perf_counter()
for i in range(len(q)):
    store.search(q[i:i+1], SearchPlan(10, {row["dim"]}, {width}, {row["shortlist"]}, kn))
ms = 1000 * (time.perf_counter() - t) / len(q)
status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
kb = lambda k: int(status[k].split()[0]) * 1024
vectors_mapped = any('vectors-' in line for line in open('/proc/self/maps'))
print(json.dumps({{'ms_per_query': ms, 'vm_rss': kb('VmRSS'), 'rss_anon': kb('RssAnon'),
                  'rss_file': kb('RssFile'), 'rss_shmem': kb('RssShmem'), 'vm_hwm': kb('VmHWM'),
                  'vectors_file_mapped': vectors_mapped, 'queries': len(q)}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# exact vs ANN threshold -------------------------------------------------------------------


def threshold_sweep(store, queries, spec: str, sizes: list[int], a) -> list[dict]:
    """At each size N (the store's first N rows), the server's two adaptive paths: exact
    shortlist (its in-RAM flat index at the shortlist dim) vs ANN shortlist, both reranked
    exactly at full dim by index.vectors over a pread store, as the server runs them.
    Recall@10 is against exact full-dim search over the same N rows."""
    from index.plan import SHORTLIST_FACTOR
    from index.rowfile import RowFile
    from index.vectors import Vectors

    factory, _, dim_s = spec.rpartition("@")
    dim, width = int(dim_s), store.shape[1]
    knobs = SearchKnobs(nprobe=a.threshold_nprobe, ef_search=a.threshold_ef)
    shortlist = SHORTLIST_FACTOR * K
    out = []
    for n in sizes:
        path = a.work_dir / f"threshold-{n}.npy"
        sub = np.lib.format.open_memmap(path, "w+", dtype=store.dtype, shape=(n, width))
        sub[:] = store[:n]
        sub.flush()
        truth = exact_top_k(sub, queries, K, width)
        t0 = time.perf_counter()
        ann = build_ann(factory, dim, sub, train_size=min(n, a.train_size))
        build_s = time.perf_counter() - t0
        vectors = Vectors(RowFile(path), width, ann)
        vectors.warm(dim)
        row = {"n": n, "factory": factory, "dim": dim, **vars(knobs), "shortlist": shortlist}
        row["ann_build_s"] = build_s
        paths = server_paths(vectors, width, dim, shortlist, knobs)
        for name, fn in paths.items():
            found = np.concatenate([fn(queries[i : i + 64]) for i in range(0, len(queries), 64)])
            row[f"{name}_recall_at_10"] = recall(found, truth)
            row[f"{name}_ms_b1"] = per_query_ms(fn, queries, 1, 3.0)
        row["ann_speedup_over_exact_shortlist"] = (
            row["exact_shortlist_ms_b1"] / row["ann_shortlist_ms_b1"]
        )
        print(json.dumps(row), flush=True)
        out.append(row)
        del vectors, ann, sub
        path.unlink()
    return out


def server_paths(vectors, width: int, dim: int, shortlist: int, knobs: SearchKnobs) -> dict:
    """The server's searches on `vectors` (index.vectors.Vectors): name -> queries -> ids."""

    def exact_full_dim(q):
        return vectors.search(q, SearchPlan(K, width, None, K))[1]

    def exact_shortlist(q):
        return vectors.search(q, SearchPlan(K, dim, width, shortlist, use_ann=False))[1]

    def ann_shortlist(q):
        return vectors.search(q, SearchPlan(K, dim, width, shortlist, knobs, use_ann=True))[1]

    return {f.__name__: f for f in (exact_full_dim, exact_shortlist, ann_shortlist)}


# plot -------------------------------------------------------------------------------------


def pareto(rows: list[dict]) -> list[dict]:
    front, top = [], -1.0
    for r in sorted(rows, key=lambda r: -r["speedup_b1"]):
        if r["recall_at_10"] > top:
            front.append(r)
            top = r["recall_at_10"]
    return front


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        kinds = sorted({(r["factory"], r["dim"]) for r in res["rows"]})
        for kind in kinds:
            rs = [r for r in res["rows"] if (r["factory"], r["dim"]) == kind]
            ax.scatter(
                [r["speedup_b1"] for r in rs],
                [r["recall_at_10"] for r in rs],
                s=14,
                label=f"{kind[0]} @ {kind[1]}",
            )
        front = pareto(res["rows"])
        ax.plot(
            [r["speedup_b1"] for r in front],
            [r["recall_at_10"] for r in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        ax.axhline(0.99, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("speed-up per single query vs exact full-dim flat (log)")
        ax.set_ylabel("recall@10 vs exact full-dim")
        ax.set_ylim(max(0.5, min(r["recall_at_10"] for r in res["rows"]) - 0.02), 1.005)
        ax.set_title(
            f"{res['data']}: {res['n']:,} x {res['width']} "
            f"(exact flat {res['baseline']['ms_b1']:.0f} ms/query)"
        )
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(res: dict) -> str:
    b = res["baseline"]
    lines = [
        f"{res['data']} {res['n']:,} x {res['width']}; exact full-dim flat "
        f"{b['ms_b1']:.1f} ms/query (batch 1), {b['ms_b64']:.2f} (batch 64)",
        "",
        "| index | dim | nprobe/ef | shortlist | recall@10 | ms b1 | ms b64 | speed-up b1 "
        "| build s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        knob = r.get("nprobe") or r.get("ef_search") or "-"
        lines.append(
            f"| {r['factory']} | {r['dim']} | {knob} | {r['shortlist']} | {r['recall_at_10']:.3f} "
            f"| {r['ms_b1']:.2f} | {r['ms_b64']:.3f} | {r['speedup_b1']:.0f}x "
            f"| {r['build_s']:.0f} |"
        )
    return "\n".join(lines)


# main -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", choices=["synthetic", "real"], default="synthetic")
    p.add_argument("--n", type=int, default=100_000, help="the issue's scale: 1000000")
    p.add_argument("--width", type=int, default=2048, help="synthetic only")
    p.add_argument("--checkpoint", type=Path, default=Path("runs/default/checkpoint.pt"))
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--store-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-search"))
    p.add_argument("--baseline-rows", type=int, default=131072, help="rows timed for exact flat")
    p.add_argument("--shortlists", default="100,200,400,1000")
    p.add_argument("--nprobes", default="16,64,128,256", help="IVF nprobe values swept")
    p.add_argument("--efs", default="64,128,256", help="HNSW ef_search values swept")
    p.add_argument("--train-size", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--grid",
        default="Flat@32;HNSW32@32;IVF1024,Flat@32;IVF1024,PQ16x4fs@32;SQ8@32;BFlat@256",
        help="factory@dim entries separated by ';'",
    )
    p.add_argument("--out", type=Path, help="default: bench/results/search-DATA-N.json")
    p.add_argument("--serve", help="FACTORY@DIM of the grid to serve from an index folder")
    p.add_argument("--serve-shortlist", type=int, default=1000)
    p.add_argument("--serve-nprobe", type=int)
    p.add_argument("--serve-ef", type=int)
    p.add_argument("--prepare-only", action="store_true", help="data and ground truth, no timing")
    p.add_argument("--index-out", type=Path, help="real: publish the store as a server index")
    p.add_argument("--index-ann", default="IVF1024,Flat@32", help="FACTORY@DIM for --index-out")
    p.add_argument("--serve-only", action="store_true", help="no baseline or grid: --serve")
    p.add_argument(
        "--threshold",
        metavar="FACTORY@DIM",
        help="exact vs ANN shortlist (both reranked at full dim) on the first N rows, N from "
        "--threshold-sizes: where the server's MOCO_ANN_MIN_ROWS should be",
    )
    p.add_argument("--threshold-sizes", default="10000,50000,200000")
    p.add_argument("--threshold-nprobe", type=int, default=128)
    p.add_argument("--threshold-ef", type=int, default=128)
    p.add_argument(
        "--repeat",
        type=int,
        help="N rounds of the flat baseline and each --nprobes x --shortlists setting of the "
        "one --grid entry, timed at batch 1 in turn: median and spread of the speed-up",
    )
    p.add_argument("--fingerprint", default="synthetic", help="checkpoint fingerprint (real)")
    p.add_argument("--plot", nargs="+", type=Path, help="JSON results to plot (no run)")
    p.add_argument("--plot-out", type=Path, default=Path("docs/results/search-pareto.png"))
    a = p.parse_args()
    if a.plot:
        results = [json.loads(f.read_text()) for f in a.plot]
        plot(results, a.plot_out)
        for res in results:
            print(table(res) + "\n")
        print(f"wrote {a.plot_out}")
        return
    a.out = a.out or Path(f"bench/results/search-{a.data}-{a.n}.json")
    faiss.omp_set_num_threads(a.threads)
    work = a.work_dir / f"{a.data}-{a.n}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (work / "queries.npy").exists():
        if a.data == "synthetic":
            make_synthetic(work, a.n, a.width, a.queries, a.store_dtype, seed=0)
        else:
            make_real(work, a.checkpoint, a.n, a.queries, a.store_dtype, seed=0)
    data_s = time.perf_counter() - t0
    store = np.load(work / "store.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    n, width = store.shape
    res = {
        "data": a.data,
        "n": n,
        "width": width,
        "store_dtype": str(store.dtype),
        "checkpoint": str(a.checkpoint) if a.data == "real" else None,
        "queries": len(queries),
        "k": K,
        "threads": a.threads,
        "loadavg_start": os.getloadavg(),
        "data_s": data_s,
        "flat_f32_full_dim_bytes": n * width * 4,
    }
    if not (work / "truth.npy").exists():
        np.save(work / "truth.npy", exact_top_k(store, queries, K, width))
    truth = np.load(work / "truth.npy")
    if a.index_out:
        publish_real_index(a, work, a.index_out)
    if a.prepare_only or a.index_out:
        return
    if a.repeat:
        res["repeat"] = repeat_run(a, store, queries, truth, work)
    elif a.threshold:
        res["threshold"] = threshold_sweep(store, queries, a.threshold, ints(a.threshold_sizes), a)
    elif not a.serve_only:
        res.update(grid_run(a, store, queries, truth, work))
    if a.serve:
        res["serving"] = serving(a, work, n, width)
        print("serving:", json.dumps(res["serving"]), flush=True)
    res["loadavg_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(a.out, res)
    if "rows" in res:
        print(table(res))
        print("best at recall@10 >= 0.99:", json.dumps(res["best"]))


def grid_run(a, store, queries, truth, work) -> dict:
    """The baseline and the grid; rows add to an existing --out (earlier grids are kept)."""
    base = exact_baseline(store, queries, a.baseline_rows)
    print(f"exact full-dim flat: {base}", flush=True)
    shortlists = ints(a.shortlists)
    grid = parse_grid(a.grid, ints(a.nprobes), ints(a.efs))
    rows = run_grid(store, queries, truth, grid, shortlists, base, a.train_size, work)
    res: dict = {"baseline": base, "rows": rows}
    if a.out.exists():
        old = json.loads(a.out.read_text())
        res["rows"] = old["rows"] + rows
        res["earlier_runs"] = [
            *old.get("earlier_runs", []),
            {k: old[k] for k in ("baseline", "loadavg_start", "loadavg_end") if k in old},
        ]
    res["best"] = best(res["rows"])
    return res


def flat_b1_ms(store: np.ndarray, queries: np.ndarray, rows: int, shards: int) -> float:
    """ms/query at batch 1 of exact full-dim flat search over the first `rows` rows, scaled to
    all rows; `shards` > 1 splits the rows over threads (FAISS scans one query on one)."""
    width = store.shape[1]
    index = faiss.IndexShards(width, True, False)
    parts = [faiss.IndexFlatIP(width) for _ in range(shards)]
    per = -(-rows // shards)
    for i, part in enumerate(parts):
        for start in range(i * per, min(rows, (i + 1) * per), 65536):
            end = min(rows, (i + 1) * per, start + 65536)
            part.add(truncate_normalize_np(store[start:end], width))
        index.add_shard(part)
    q = truncate_normalize_np(queries, width)
    ms = per_query_ms(lambda x: index.search(x, K), q, 1, 6.0) * len(store) / rows
    index.reset()
    return ms


def repeat_run(a, store, queries, truth, work) -> dict:
    """The baseline and the settings timed in turn, a.repeat times, in one process: a ratio
    from one round shares that round's load; the median and spread say how stable it is."""
    from index.rowfile import RowFile
    from index.vectors import Rows

    (entry,) = parse_grid(a.grid)
    factory, dim = entry["factory"], entry["dim"]
    path = ann_file(work, factory, dim)
    if path.exists():
        ann = AnnIndex.load(path, dim, factory)
    else:
        ann = build_ann(factory, dim, store, train_size=a.train_size)
        ann.save(path)
    bank = Rows(RowFile(work / "store.npy"), store.shape[1])
    width = store.shape[1]
    rows = min(len(store), a.baseline_rows)
    settings = []
    for nprobe in ints(a.nprobes):
        for shortlist in ints(a.shortlists):
            kn = SearchKnobs(nprobe=nprobe)

            def run(q, kn=kn, shortlist=shortlist):
                return rerank(bank, q, ann.search(q, shortlist, kn)[1], K, width)[1]

            found = np.concatenate([run(queries[i : i + 1]) for i in range(len(queries))])
            settings.append(
                {
                    "nprobe": nprobe,
                    "shortlist": shortlist,
                    "run": run,
                    "recall_at_10": recall(found, truth),
                    "rounds": [],
                }
            )
    base_1, base_2 = [], []
    for r in range(a.repeat):
        base_1.append(flat_b1_ms(store, queries, rows, 1))
        base_2.append(flat_b1_ms(store, queries, rows, 2))
        for s in settings:
            s["rounds"].append(per_query_ms(s["run"], queries, 1, 3.0))
        print(
            f"round {r}: flat {base_1[-1]:.0f} ms (2 threads {base_2[-1]:.0f}), "
            + ", ".join(
                f"{s['nprobe']}/{s['shortlist']}: {s['rounds'][-1]:.2f} ms" for s in settings
            ),
            flush=True,
        )
    out = []
    for s in settings:
        ratio = np.array(base_1) / np.array(s["rounds"])
        ratio_2 = np.array(base_2) / np.array(s["rounds"])
        out.append(
            {
                "factory": factory,
                "dim": dim,
                "nprobe": s["nprobe"],
                "shortlist": s["shortlist"],
                "recall_at_10": s["recall_at_10"],
                "ms_b1": s["rounds"],
                "speedup_b1": ratio.tolist(),
                "speedup_b1_median": float(np.median(ratio)),
                "speedup_b1_min": float(ratio.min()),
                "speedup_b1_max": float(ratio.max()),
                "speedup_b1_vs_2_thread_flat_median": float(np.median(ratio_2)),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return {
        "baseline_rows": rows,
        "scale": len(store) / rows,
        "flat_b1_ms": base_1,
        "flat_b1_ms_2_threads": base_2,
        "settings": out,
    }


def serving(a, work: Path, n: int, width: int) -> dict:
    factory, _, dim = a.serve.rpartition("@")
    info = {
        "checkpoint": str(a.checkpoint) if a.data == "real" else "synthetic",
        "fingerprint": a.fingerprint,
    }
    folder = serve_folder(work, factory, int(dim), info, a.train_size)
    row = {
        "dim": int(dim),
        "shortlist": a.serve_shortlist,
        "nprobe": a.serve_nprobe,
        "ef_search": a.serve_ef,
    }
    mem = serving_rss(folder, work / "queries.npy", row, width)
    return {**row, "factory": factory, **mem, "rss_over_flat_f32": mem["vm_rss"] / (n * width * 4)}


if __name__ == "__main__":
    main()
