"""Helpers shared across the tests: a free port, a real server process, a tiny trained
checkpoint and its index, reference vectors. Holds no tests."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import httpx
import numpy as np
from PIL import Image

from core.checkpoint import load_checkpoint
from core.encoder import load_encoder
from core.preprocess import EvalPreprocess
from trainer.build_index import IndexBuildConfig, build_index_folder
from trainer.config import TrainConfig
from trainer.embed import extract_embeddings
from trainer.train import train

NESTING = [8, 16, 32, 64]


def train_tiny(dataset: str, out: Path, seed: int = 0, nesting: list[int] = NESTING) -> Path:
    """Two CPU steps: enough weights for the server to load, in about a second."""
    cfg = TrainConfig(
        dataset=dataset,
        output_dir=out,
        cache_dir=out / "cache",
        batch_size=32,
        queue_size=64,
        epochs=1,
        max_steps=2,
        nesting_list=nesting,
        workers=0,
        device="cpu",
        resume="never",
        seed=seed,
    )
    train(cfg)
    return out / "checkpoint.pt"


PHOTO_CLASSES = ("brick", "cat", "sky")


def write_image_folder(root: Path, per_class: int = 16) -> Path:
    """Photos as a user has them: class sub-folders, PNG and JPEG, mixed sizes, some gray."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(PHOTO_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(24, 90)), int(rng.integers(24, 90))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., c] = 255  # one channel per class: learnable, not needed
            image = Image.fromarray(pixels)
            if i % 5 == 0:
                image = image.convert("L")
            image.save(root / name / f"img_{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root


def train_on_folder(folder: Path, out: Path) -> Path:
    """Two CPU steps on an image folder (48 images: a queue above the usual share)."""
    cfg = TrainConfig(
        dataset=str(folder),
        output_dir=out,
        cache_dir=out / "cache",
        batch_size=8,
        queue_size=16,
        allow_large_queue=True,
        epochs=1,
        max_steps=2,
        nesting_list=[8, 16, 32],
        workers=0,
        device="cpu",
        resume="never",
        image_size=32,
    )
    train(cfg)
    return out / "checkpoint.pt"


def build_index(checkpoint: Path, dataset: str, out: Path, limit: int = 0) -> Path:
    build_index_folder(
        IndexBuildConfig(
            checkpoint=checkpoint, dataset=dataset, out=out, batch_size=64, limit=limit
        )
    )
    return out


def evaluator_embeddings(checkpoint: Path, ds: datasets.Dataset) -> np.ndarray:
    """What `trainer.evaluate` extracts for these images: the reference for the server."""
    ckpt = load_checkpoint(checkpoint)
    preprocess = EvalPreprocess.of(ckpt.model)
    ref, _ = extract_embeddings(load_encoder(ckpt), ds, preprocess, "image", "label", "cpu")
    return ref


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def split(dataset: str, name: str = "train") -> datasets.Dataset:
    return datasets.load_from_disk(dataset)[name]


def matryoshka_vectors(n: int, width: int, seed: int) -> np.ndarray:
    """Random vectors whose energy decays along the dims, as in a Matryoshka embedding."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(1.0 + np.arange(width))
    return (rng.standard_normal((n, width)) * scale).astype(np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m server` in a subprocess; flags as a user would type them, settings from env."""

    def __init__(self, checkpoint, index_dir, tmp_path, **env: str):
        self.checkpoint = checkpoint
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / f"server-{self.port}.log", "w")  # noqa: SIM115
        environ = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        argv = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint)]
        argv += ["--port", str(self.port)]
        argv += ["--index-dir", str(index_dir)] if index_dir is not None else []
        self.proc = subprocess.Popen(argv, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, (tmp_path / f"server-{self.port}.log").read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


CHROMIUM = os.environ.get("MOCO_UI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MOCO_UI_CHROMEDRIVER", "/usr/bin/chromedriver")
BROWSER_WAIT_S = 60


def headless_chromium(*args: str):
    """Debian's Chromium through Selenium (no driver download); skips when it is missing."""
    import pytest

    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing: `make test-ui` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    for arg in (*args, "--window-size=1400,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
    driver.set_page_load_timeout(BROWSER_WAIT_S)
    return driver
