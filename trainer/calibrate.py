"""`python -m trainer.calibrate CHECKPOINT`: fit the int8/uint8 grid of a checkpoint saved
before training fitted one (the upgrade path for int8/uint8 outputs), in place.

The same fit as at the end of training (trainer.rotation.fit_served): the served encoder,
rotation included, over at most FIT_SAMPLES train images; nothing else in the file changes,
so its fingerprint (and every index built from it) stays valid.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.checkpoint import load_checkpoint, save_checkpoint
from core.cli import make_parser, run_cli
from core.device import pick_device
from core.encoder import load_encoder
from core.quantize import fit_calibration
from trainer.checkpointing import train_config
from trainer.rotation import train_sample

PROG = "python -m trainer.calibrate"


def calibrate(path: Path, device: str = "auto", dataset: str | None = None) -> None:
    ckpt = load_checkpoint(path)
    cfg = train_config(ckpt)
    if dataset:
        cfg = cfg.model_copy(update={"dataset": dataset})
    on = pick_device(device)
    x = train_sample(load_encoder(ckpt, on), cfg, on)  # rotated: the served coordinates
    ckpt.calibration = fit_calibration(x, list(ckpt.model.nesting_list))
    save_checkpoint(ckpt, path)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(PROG, "Fit the int8/uint8 grid of a checkpoint that has none.")
    parser.add_argument("checkpoint", type=Path, help="a trainer checkpoint.pt (rewritten)")
    parser.add_argument("--dataset", help="override the checkpoint's dataset")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    calibrate(args.checkpoint, args.device, args.dataset)
    dims = load_checkpoint(args.checkpoint).model.nesting_list
    print(f"calibrated {args.checkpoint} at dims {dims}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
