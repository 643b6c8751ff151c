"""GPU throughput, ratios from one run (issue 14). Prints a table, writes one JSON.

(a) step ceiling: the trainer's MoCo + Matryoshka step on synthetic images already on the device
(b) end-to-end: the same step fed by the trainer's data stream from a folder of generated
    500x375 JPEGs, with PIL decode in DataLoader workers and with decode on the device; the
    data-wait fraction of each, the decode stage alone, and device-vs-PIL pixel agreement
(c) (a) and (b) with the encoders compiled (torch.compile, as `--compile`)
(d) server embed: the batcher in process (preprocessed tensors; JPEG bytes through the
    service), and /v1/embed over HTTP on 127.0.0.1, each / the bare model at the same batch
(e) evaluation extraction (trainer.embed, PIL decode in workers) img/s

`--profile gpu` (default) is the real config: ResNet-50, 224 px, nesting 8..2048, K = 65,536,
batch 256, bf16, channels_last; it runs in about 5 minutes on one H200 (docs/GPU.md).
`--profile smoke` is the same code at toy sizes on the CPU (tests/deploy/test_bench_gpu.py).
The JSON is rewritten after every part, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, free_port, write_result

PARTS = ("a", "b", "c", "d", "e")


@dataclass(frozen=True)
class Profile:
    device: str
    arch: str
    image_size: int
    nesting_list: tuple[int, ...]
    queue_size: int
    batch_size: int
    images: int  # JPEGs written; 90% become the training split
    jpeg_size: tuple[int, int]  # width, height
    warmup: int  # steps before timing (compilation happens here)
    steps: int  # timed steps; warmup + steps fit in one epoch
    seconds: float  # per server measurement
    concurrency: int  # server clients
    per_request: int  # images per embed request
    eval_images: int


PROFILES = {
    "gpu": Profile(
        device="cuda",
        arch="resnet50",
        image_size=224,
        nesting_list=(8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        queue_size=65536,
        batch_size=256,
        images=9216,
        jpeg_size=(500, 375),
        warmup=8,
        steps=24,
        seconds=6.0,
        concurrency=32,
        per_request=16,
        eval_images=4096,
    ),
    "smoke": Profile(
        device="cpu",
        arch="convnet",
        image_size=32,
        nesting_list=(8, 16, 32),
        queue_size=64,
        batch_size=16,
        images=160,
        jpeg_size=(50, 38),
        warmup=1,
        steps=3,
        seconds=0.5,
        concurrency=4,
        per_request=4,
        eval_images=64,
    ),
}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# -- data --------------------------------------------------------------------------------


def _write_jpeg(job: tuple[Path, int, int, int]) -> int:
    """A photo-like JPEG (smooth colour fields, edges, sensor noise) at quality 90."""
    from PIL import Image

    path, width, height, seed = job
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, width / 2)
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))[..., None]
        img += blob * rng.uniform(0, 255, 3)
    img += rng.normal(0, 10, img.shape)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path.stat().st_size


def make_jpeg_folder(root: Path, n: int, size: tuple[int, int], classes: int = 10) -> dict:
    """root/class_k/img_i.jpg, written in parallel; an image folder the trainer loads as is."""
    jobs = []
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"img_{i:05d}.jpg", size[0], size[1], i))
    start = time.perf_counter()
    with Pool(available_cores()) as pool:
        sizes = pool.map(_write_jpeg, jobs, chunksize=32)
    return {
        "images": n,
        "width": size[0],
        "height": size[1],
        "mean_kb": float(np.mean(sizes)) / 1024,
        "write_s": time.perf_counter() - start,
    }


# -- training step -------------------------------------------------------------------------


def train_config(p: Profile, folder: Path, workdir: Path, **overrides):
    from trainer.config import TrainConfig

    values = dict(
        dataset=str(folder),
        cache_dir=workdir / "cache",
        output_dir=workdir / "run",
        arch=p.arch,
        image_size=p.image_size,
        nesting_list=list(p.nesting_list),
        queue_size=p.queue_size,
        batch_size=p.batch_size,
        allow_large_queue=True,  # the queue's share of this small folder is irrelevant to speed
        augment="batch",
        preload="off",
        workers=max(1, available_cores() - 2),
        device=p.device,
        resume="never",
        epochs=1,
    )
    return TrainConfig(**(values | overrides))


class Step:
    """The trainer's own step (`trainer.train.setup` + `train_step`), counted."""

    def __init__(self, cfg):
        from trainer.train import setup

        self.run = setup(cfg, environ={})
        self.device, self.n = self.run.device, 0

    def __call__(self, im_q: torch.Tensor, im_k: torch.Tensor) -> None:
        from trainer.train import train_step

        train_step(self.run, im_q, im_k, self.n)
        self.n += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Step, batches: Iterator, warmup: int, steps: int, batch: int) -> dict:
    """Steady-state rate after `warmup` steps; data wait = time blocked on the next batch."""
    for _ in range(warmup):
        step(*next(batches))
    sync(step.device)
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        im_q, im_k = next(batches)
        waited += time.perf_counter() - t
        step(im_q, im_k)
    sync(step.device)
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": steps * batch / elapsed,
        "data_wait_fraction": waited / elapsed,
        "steps": steps,
    }


def synthetic(cfg, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float views already on the device: the data pipeline costs nothing."""
    shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    g = torch.Generator(device=device).manual_seed(0)
    views = [torch.randn(shape, device=device, generator=g) for _ in range(4)]
    i = 0
    while True:
        yield views[i % 4], views[(i + 1) % 4]
        i += 2


def decode_stage(data, device: torch.device) -> dict:
    """One epoch through the decode stage alone (workers, plus the device for --decode device)."""
    from trainer.data.decode import EncodedBatch

    data.sampler.set_epoch(1)
    n, start = 0, time.perf_counter()
    for batch in data.loader:
        if isinstance(batch, EncodedBatch):
            images = batch.decode(data.stored_size, device)
        else:
            images = batch[0].to(device, non_blocking=True)
        n += len(images)
    sync(device)
    return {"images_per_s": n / (time.perf_counter() - start), "images": n}


def decode_agreement(folder: Path, size: int, device: torch.device, n: int = 64) -> dict:
    """Device decode vs PIL on the same files: mean and max absolute difference (0..255)."""
    from trainer.data.decode import as_byte_tensor, decode_jpegs, pil_decode

    blobs = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))[:n]]
    got = decode_jpegs([as_byte_tensor(b) for b in blobs], size, device).cpu().int()
    want = torch.stack([pil_decode(b, size) for b in blobs]).int()
    diff = (got - want).abs().float()
    return {
        "images": len(blobs),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
    }


def bench_training(p: Profile, folder: Path, workdir: Path, compiled: bool, out: dict) -> None:
    """(a) and (b) for one model (eager or compiled); fills out["a"/"b"] or out["c"]."""
    from core.preprocess import stored_size
    from trainer.data.datasets import TrainData, load_splits

    device = torch.device(p.device)
    cfg = train_config(p, folder, workdir, decode="pil", compile=compiled)
    step = Step(cfg)
    t0 = time.perf_counter()
    ceiling = time_steps(step, synthetic(cfg, device), p.warmup, p.steps, p.batch_size)
    ceiling["warmup_and_compile_s" if compiled else "warmup_s"] = (
        time.perf_counter() - t0 - p.steps * p.batch_size / ceiling["images_per_s"]
    )
    train_ds, _ = load_splits(cfg)
    e2e = {}
    for mode in ("pil", "device"):
        data = TrainData(cfg.model_copy(update={"decode": mode}), train_ds, 0, 1, device)
        step.run.data = data
        assert data.decode == mode and p.warmup + p.steps <= data.steps_per_epoch
        batches = data.epoch(0)
        timed = time_steps(step, batches, p.warmup, p.steps, p.batch_size)
        batches.close()
        timed["ratio_to_ceiling"] = timed["images_per_s"] / ceiling["images_per_s"]
        if not compiled:
            timed["decode_stage"] = decode_stage(data, device)
        timed["workers"] = cfg.workers
        e2e[mode] = timed
    key_a, key_b = ("c_ceiling", "c_end_to_end") if compiled else ("a_ceiling", "b_end_to_end")
    out[key_a], out[key_b] = ceiling, e2e
    if compiled:
        out["c_compile_speedup"] = ceiling["images_per_s"] / out["a_ceiling"]["images_per_s"]
    else:
        pil, dev = e2e["pil"]["decode_stage"], e2e["device"]["decode_stage"]
        e2e["decode_stage_ratio_device_over_pil"] = dev["images_per_s"] / pil["images_per_s"]
        e2e["agreement"] = decode_agreement(folder, stored_size(cfg.image_size), device)
    step.run.writer.close()
    del step, data
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_checkpoint(p: Profile, folder: Path, workdir: Path) -> Path:
    """Two real training steps through `trainer.train.train` (weights do not matter here)."""
    from trainer.train import train

    cfg = train_config(p, folder, workdir, max_steps=2, output_dir=workdir / "ckpt")
    train(cfg)
    return cfg.output_dir / "checkpoint.pt"


# -- server --------------------------------------------------------------------------------


def rate(fn: Callable[[], int], seconds: float, device: torch.device) -> float:
    fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += fn()
    sync(device)
    return n / (time.perf_counter() - start)


async def _concurrent(worker: Callable[[int], object], concurrency: int, seconds: float) -> float:
    """Images/s of `concurrency` loops of `worker` (each call returns its image count)."""
    await worker(0)  # type: ignore[misc]
    done, start = 0, time.perf_counter()

    async def loop(w: int) -> None:
        nonlocal done
        while time.perf_counter() < start + seconds:
            done += await worker(w)  # type: ignore[misc]

    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    return done / (time.perf_counter() - start)


def server_env(p: Profile) -> dict[str, str]:
    return {
        "MOCO_DEVICE": p.device,
        "MOCO_MAX_BATCH_SIZE": str(p.batch_size),
        "MOCO_MAX_WAIT_MS": "5",
        "MOCO_MAX_QUEUE": "4096",
        "MOCO_MAX_IMAGES": str(max(64, p.per_request)),
    }


def bench_server(p: Profile, checkpoint: Path, folder: Path, out: dict) -> None:
    from server.service import Service
    from server.settings import Settings

    device = torch.device(p.device)
    os.environ.update(server_env(p))
    service = Service(Settings(checkpoint=checkpoint))
    blobs = [path.read_bytes() for path in sorted(folder.rglob("*.jpg"))[: p.batch_size]]
    from server.images import decode_into

    size = service.embedding.preprocess.image_size
    x = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8)  # the batcher's uint8 batch
    decode_into(x, blobs, 0, service.embedding.preprocess, service.settings.max_pixels)
    bare = rate(lambda: len(service.embedding.batcher.forward_fn(x)), p.seconds, device)
    requests = [blobs[i : i + p.per_request] for i in range(0, len(blobs), p.per_request)]

    async def in_process() -> tuple[float, float]:
        await service.embedding.batcher.start()
        try:
            # the batcher decodes per batch now: both paths take the JPEG bytes
            async def tensors(w: int) -> int:
                return len((await service.embedding.batcher.embed(requests[w % len(requests)]))[0])

            async def jpegs(w: int) -> int:
                return len((await service.embedding.embed_images(requests[w % len(requests)]))[0])

            return (
                await _concurrent(tensors, p.concurrency, p.seconds),
                await _concurrent(jpegs, p.concurrency, p.seconds),
            )
        finally:
            await service.embedding.batcher.stop()

    batcher_ips, bytes_ips = asyncio.run(in_process())
    payloads = [[base64.b64encode(b).decode() for b in request] for request in requests if request]
    http_ips = http_embed(p, checkpoint, payloads)
    out["d_server"] = {
        "batch_size": p.batch_size,
        "concurrency": p.concurrency,
        "images_per_request": p.per_request,
        "model_dtype": str(next(service.embedding.encoder.parameters()).dtype),
        "bare_model_images_per_s": bare,
        "batcher_tensors_images_per_s": batcher_ips,
        "in_process_jpeg_images_per_s": bytes_ips,
        "http_jpeg_images_per_s": http_ips,
        "ratio_batcher_over_bare": batcher_ips / bare,
        "ratio_in_process_jpeg_over_bare": bytes_ips / bare,
        "ratio_http_over_bare": http_ips / bare,
    }
    service.close()


def http_embed(p: Profile, checkpoint: Path, payloads: list[list[str]]) -> float:
    """/v1/embed of a real `python -m server` on 127.0.0.1 under concurrent clients."""
    import httpx

    port = free_port()
    argv = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint), "--port", str(port)]
    env = {**os.environ, **server_env(p)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {proc.stderr.read()[-2000:]!r}")
            time.sleep(0.3)

        async def run() -> float:
            limits = httpx.Limits(max_connections=p.concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

                async def post(w: int) -> int:
                    body = {"images": payloads[w % len(payloads)], "dim": p.nesting_list[0]}
                    r = await client.post("/v1/embed", json=body)
                    r.raise_for_status()
                    return len(body["images"])

                return await _concurrent(post, p.concurrency, p.seconds)

        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(60)


# -- evaluation ----------------------------------------------------------------------------


def bench_eval(p: Profile, checkpoint: Path, folder: Path, workdir: Path, out: dict) -> None:
    from core.checkpoint import load_checkpoint
    from core.encoder import load_encoder
    from core.preprocess import EvalPreprocess
    from trainer.data.datasets import load_splits
    from trainer.embed import extract_embeddings

    device = torch.device(p.device)
    ckpt = load_checkpoint(checkpoint)
    encoder = load_encoder(ckpt, device)
    cfg = train_config(p, folder, workdir)
    train_ds, _ = load_splits(cfg)
    ds = train_ds.select(range(min(p.eval_images, len(train_ds))))
    pre = EvalPreprocess.of(ckpt.model)
    start = time.perf_counter()
    x, _ = extract_embeddings(
        encoder, ds, pre, cfg.image_column, cfg.label_column, device, p.batch_size,
        workers=cfg.workers, desc="eval extraction",
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    out["e_eval_extraction"] = {
        "images": len(x),
        "workers": cfg.workers,
        "batch_size": p.batch_size,
        "images_per_s": len(x) / elapsed,
    }


# -- report --------------------------------------------------------------------------------

IPS, RATIO, FRACTION = "{:,.0f} img/s", "{:.2f}", "{:.1%}"
B = "b_end_to_end"
ROWS = (
    ("(a) step ceiling, synthetic data", "a_ceiling.images_per_s", IPS),
    ("(b) end-to-end, PIL decode in workers", f"{B}.pil.images_per_s", IPS),
    ("      / ceiling", f"{B}.pil.ratio_to_ceiling", RATIO),
    ("      data-wait fraction", f"{B}.pil.data_wait_fraction", FRACTION),
    ("    end-to-end, decode on the device", f"{B}.device.images_per_s", IPS),
    ("      / ceiling", f"{B}.device.ratio_to_ceiling", RATIO),
    ("      data-wait fraction", f"{B}.device.data_wait_fraction", FRACTION),
    ("    decode stage alone, PIL workers", f"{B}.pil.decode_stage.images_per_s", IPS),
    ("    decode stage alone, device", f"{B}.device.decode_stage.images_per_s", IPS),
    ("      device / PIL", f"{B}.decode_stage_ratio_device_over_pil", "{:.1f}x"),
    ("    device vs PIL pixels, mean |diff| (0-255)", f"{B}.agreement.mean_abs_diff", RATIO),
    ("(c) compiled step ceiling", "c_ceiling.images_per_s", IPS),
    ("      speed-up over eager", "c_compile_speedup", "{:.2f}x"),
    ("      warm-up incl. compilation", "c_ceiling.warmup_and_compile_s", "{:.0f} s"),
    ("    compiled end-to-end, PIL / ceiling", "c_end_to_end.pil.ratio_to_ceiling", RATIO),
    ("    compiled end-to-end, device / ceiling", "c_end_to_end.device.ratio_to_ceiling", RATIO),
    ("(d) bare model at the server's batch", "d_server.bare_model_images_per_s", IPS),
    ("    batcher in process (tensors) / bare", "d_server.ratio_batcher_over_bare", RATIO),
    ("    service in process (JPEGs) / bare", "d_server.ratio_in_process_jpeg_over_bare", RATIO),
    ("    HTTP /v1/embed (base64 JPEGs) / bare", "d_server.ratio_http_over_bare", RATIO),
    ("(e) evaluation extraction", "e_eval_extraction.images_per_s", IPS),
)
GOALS = (
    ("end-to-end, device decode / ceiling >= 0.85", f"{B}.device.ratio_to_ceiling", 0.85),
    ("data-wait fraction, device decode < 5%", f"{B}.device.data_wait_fraction", -0.05),
    ("decode stage device / PIL workers >= 3", f"{B}.decode_stage_ratio_device_over_pil", 3.0),
    ("server batcher in process / bare >= 0.8", "d_server.ratio_batcher_over_bare", 0.8),
)


def lookup(result: dict, dotted: str):
    value = result
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def report(r: dict) -> str:
    """The printed table: every row from the JSON; '-' where a part did not run."""
    lines = [f"bench_gpu --profile {r['profile']}: {r['device_name']}, torch {r['torch']}"]
    for label, dotted, fmt in ROWS:
        value = lookup(r, dotted)
        lines.append(f"  {label:<46} {'-' if value is None else fmt.format(value):>14}")
    real = r["profile"] == "gpu"
    lines.append("goals (issue 14)" + ("" if real else ", judged on --profile gpu only") + ":")
    for label, dotted, target in GOALS:
        value = lookup(r, dotted)
        # a negative target is an upper bound
        met = value is not None and (value >= target if target >= 0 else value < -target)
        verdict = "not measured" if value is None else ("met" if met else "NOT met")
        verdict = verdict if real else "-"
        shown = "-" if value is None else f"{value:.3f}"
        lines.append(f"  {label:<46} {shown:>14}  {verdict}")
    for part, error in r["errors"].items():
        lines.append(f"  part {part} failed: {error.strip().splitlines()[-1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of a..e")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch (default: a temp dir)")
    ap.add_argument("--output", type=Path, default=None, help="JSON (default: bench/results/)")
    args = ap.parse_args(argv)
    parts = [s for s in args.parts.split(",") if s]
    if bad := [s for s in parts if s not in PARTS]:
        ap.error(f"--parts: unknown {','.join(bad)}; allowed: {','.join(PARTS)}")
    p = PROFILES[args.profile]
    if p.device == "cuda" and not torch.cuda.is_available():
        ap.error("--profile gpu needs a CUDA device; on a CPU run --profile smoke")
    output = args.output or RESULTS / f"gpu-{args.profile}.json"
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        os.environ.setdefault("HF_DATASETS_CACHE", str(workdir / "hf"))
        return run(p, args.profile, parts, workdir, output)


def run(p: Profile, name: str, parts: list[str], workdir: Path, output: Path) -> int:
    if p.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result: dict = {
        "profile": name,
        "config": asdict(p),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if p.device == "cuda" else platform.machine(),
        "cores": available_cores(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "errors": {},
    }
    output.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        write_result(output, result)

    def attempt(part: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception:
            result["errors"][part] = traceback.format_exc()
            print(f"part {part} failed:\n{result['errors'][part]}", file=sys.stderr)
        result.setdefault("part_seconds", {})[part] = time.perf_counter() - start
        save()

    folder = workdir / "jpegs"
    result["jpegs"] = make_jpeg_folder(folder, p.images, p.jpeg_size)
    if "a" in parts or "b" in parts:
        attempt("ab", lambda: bench_training(p, folder, workdir, False, result))
    if "c" in parts:
        attempt("c", lambda: bench_training(p, folder, workdir, True, result))
    checkpoint = workdir / "ckpt" / "checkpoint.pt"
    if "d" in parts or "e" in parts:
        attempt("checkpoint", lambda: make_checkpoint(p, folder, workdir))
    if "d" in parts and checkpoint.is_file():
        attempt("d", lambda: bench_server(p, checkpoint, folder, result))
    if "e" in parts and checkpoint.is_file():
        attempt("e", lambda: bench_eval(p, checkpoint, folder, workdir, result))
    save()
    print(report(result))
    print(f"wrote {output}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
