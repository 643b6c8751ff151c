"""`python -m trainer.export CHECKPOINT OUT --format onnx|safetensors|triton` (comma list).

safetensors: OUT/model.safetensors, config.json, preprocessor_config.json, README.md
onnx:        the same folder plus OUT/model.onnx (checked against PyTorch with
             onnxruntime on --check-images, written to OUT/onnx_check.json)
triton:      OUT/<name>/config.pbtxt + OUT/<name>/1/model.onnx (a model repository)

Only what serving needs leaves the checkpoint: the query encoder, the served rotation, the
int8 grid and `ModelConfig`; never the key encoder, the queue or the optimizer state.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from core.checkpoint import load_checkpoint
from core.cli import UsageError, make_parser
from core.export_folder import save_folder
from core.preprocess import decode_rgb
from core.served import ServedModel
from trainer.export.card import model_card, read_eval

PROG = "python -m trainer.export"
FORMATS = ("onnx", "safetensors", "triton")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_images(folder: Path, limit: int) -> list:
    from PIL import Image

    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise UsageError(f"--check-images {folder}: no image files found")
    step = max(1, len(files) // limit)
    out = []
    for p in files[::step][:limit]:
        with Image.open(p) as im:
            out.append(decode_rgb(im))
    return out


def export(
    checkpoint: Path,
    out: Path,
    formats: list[str],
    *,
    name: str = "moco-matryoshka",
    eval_json: Path | None = None,
    images: Path | None = None,
    max_images: int = 64,
) -> dict:
    """Write the asked formats; returns what was written and checked (also printed)."""
    ckpt = load_checkpoint(checkpoint)
    served = ServedModel.of(ckpt)
    report: dict = {"checkpoint": str(checkpoint), "checkpoint_bytes": checkpoint.stat().st_size}
    if "safetensors" in formats or "onnx" in formats:
        result = read_eval(eval_json if eval_json else checkpoint.parent / "eval.json")
        save_folder(served, out)
        (out / "README.md").write_text(model_card(name, ckpt, result, formats))
    onnx_path = None
    if "onnx" in formats or "triton" in formats:
        from trainer.export.onnx_model import compare_onnx, export_onnx

        tmp = None
        if "onnx" in formats:
            onnx_path = export_onnx(served, out / "model.onnx")
        else:
            tmp = tempfile.TemporaryDirectory()
            onnx_path = export_onnx(served, Path(tmp.name) / "model.onnx")
        if images is not None:
            check = compare_onnx(served, onnx_path, check_images(images, max_images))
            report["onnx_check"] = check
            if "onnx" in formats:
                (out / "onnx_check.json").write_text(json.dumps(check, indent=2) + "\n")
        if "triton" in formats:
            from trainer.export.triton import write_repository

            model_dir = write_repository(out, name, served, onnx_path)
            report["triton_model"] = str(model_dir)
        if tmp is not None:
            tmp.cleanup()
    report["out"] = str(out)
    report["out_bytes"] = folder_size(out)
    return report


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    wrong = [f for f in formats if f not in FORMATS]
    if wrong or not formats:
        raise UsageError(f"--format {text!r}: allowed {', '.join(FORMATS)} (comma-separated)")
    return formats


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(PROG, "Export a checkpoint's served model: ONNX, safetensors, Triton.")
    parser.add_argument("checkpoint", type=Path, help="a trainer checkpoint.pt")
    parser.add_argument("out", type=Path, help="the folder (or Triton repository) to write")
    parser.add_argument("--format", default="safetensors", help=f"{', '.join(FORMATS)}")
    parser.add_argument("--name", default="moco-matryoshka", help="model name (card, Triton)")
    parser.add_argument("--eval", type=Path, help="eval.json (default: beside the checkpoint)")
    parser.add_argument(
        "--check-images", type=Path, help="image folder: compare onnxruntime with PyTorch"
    )
    parser.add_argument("--max-images", type=int, default=64, help="images checked")
    args = parser.parse_args(argv)
    report = export(
        args.checkpoint,
        args.out,
        parse_formats(args.format),
        name=args.name,
        eval_json=args.eval,
        images=args.check_images,
        max_images=args.max_images,
    )
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
