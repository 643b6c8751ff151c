"""examples/photo_folder.py: the tutorial's folder of photos, from a stand-in scikit-image wheel."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["brick", "grass", "gravel", "chelsea", "coffee", "motorcycle_left", "astronaut"]


def fake_wheel(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for name in SOURCES:
            pixels = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
            z.writestr(f"skimage/data/{name}.png", png(pixels))
    return path


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_photo_folder_writes_classes_of_mixed_sizes_modes_and_formats(tmp_path):
    wheel = fake_wheel(tmp_path / "scikit_image-0-py3-none-any.whl")
    out = tmp_path / "photos"
    script = ROOT / "examples" / "photo_folder.py"
    run = [sys.executable, str(script), str(out), "--per-class", "20", "--wheel", str(wheel)]
    subprocess.run(run, check=True, capture_output=True)
    files = sorted(out.rglob("*.*"))
    assert sorted(p.name for p in out.iterdir()) == [
        "brick", "cat", "coffee", "grass", "gravel", "motorcycle"
    ]  # fmt: skip
    assert len(files) == 6 * 20 and {p.suffix for p in files} == {".jpg", ".png"}
    images = [Image.open(p) for p in files]
    assert all(48 <= max(im.size) <= 320 * 4 / 3 + 1 for im in images)
    assert {im.mode for im in images} == {"RGB", "L"}
    queries = sorted(p.name for p in (tmp_path / "photos-queries").iterdir())
    assert queries == ["astronaut.png", "cat.jpg", "coffee.jpg"]
