"""How training reports progress: bars for a person at a terminal, lines for logs and machines.

A progress bar redrawn with '\\r' is unreadable in a log file or `kubectl logs`, so when stdout
is not a terminal (or --log-format text|json asks) there are no bars, ours or the `datasets`
library's: one line per --log-every steps and one per epoch on stdout, as text or as one JSON
object per line. Notes for the person (sizes chosen, the split, where the checkpoint went) go
to stderr in every format, so stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import datasets


def use_bars(log_format: str) -> bool:
    """Bars only for --log-format auto on a terminal."""
    return log_format == "auto" and sys.stdout.isatty()


def quiet_library_bars() -> None:
    """The `datasets` library's bars (loading, "Saving the dataset") off for this process."""
    datasets.disable_progress_bars()


@dataclass(frozen=True)
class ProgressLine:
    """One step window (`event` "step") or one epoch ("epoch"); losses are means over it."""

    event: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss_per_dim: dict[str, float]
    images_per_s: float
    data_wait_fraction: float
    loss: float | None = None  # the weighted training loss (step windows only)
    lr: float | None = None

    def text(self) -> str:
        """`step 20/80 (epoch 1/2) loss 5.012 | per dim 8:4.910 16:5.020 | 410 img/s, ...` or
        `epoch 1/2 done (step 40/80) | per dim ...`."""
        if self.event == "epoch":
            head = f"epoch {self.epoch}/{self.epochs} done (step {self.step}/{self.total_steps})"
        else:
            head = f"step {self.step}/{self.total_steps} (epoch {self.epoch}/{self.epochs})"
        total = "" if self.loss is None else f" loss {self.loss:.3f}"
        dims = " ".join(f"{d}:{v:.3f}" for d, v in self.loss_per_dim.items())
        lr = "" if self.lr is None else f", lr {self.lr:.3g}"
        return (
            f"{head}{total} | per dim {dims} | {self.images_per_s:.0f} img/s, "
            f"data wait {self.data_wait_fraction:.0%}{lr}"
        )


class Reporter:
    """Writes progress lines in the run's --log-format; silent where bars are drawn instead."""

    def __init__(self, log_format: str, out: TextIO | None = None) -> None:
        self.format = log_format
        self.bars = use_bars(log_format)
        self.out = out

    def _write(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def progress(self, line: ProgressLine) -> None:
        if self.bars:
            if line.event == "epoch":  # per-dim losses during training, under the bars
                from tqdm import tqdm

                tqdm.write(line.text(), file=sys.stderr)
            return
        self._write(json.dumps({**asdict(line)}) if self.format == "json" else line.text())

    def done(self, checkpoint: Path, step: int) -> None:
        """Closing lines: where the checkpoint is and what to run next."""
        out_dir = checkpoint.parent
        nxt = (
            f"make eval OUTPUT={out_dir}  (or python -m trainer.evaluate --checkpoint {checkpoint})"
        )
        if self.format == "json":
            record = {"event": "done", "step": step, "checkpoint": str(checkpoint), "next": nxt}
            self._write(json.dumps(record))
        print(f"checkpoint: {checkpoint} (step {step})", file=sys.stderr)
        print(f"next: {nxt}", file=sys.stderr, flush=True)
