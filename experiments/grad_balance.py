"""How much gradient each nested loss sends into the shared network, per weighting.

Each prefix is L2-normalised, and with the embedding BN every coordinate has unit variance, so
|q[:d]| ~ sqrt(d): the d-dim loss's gradient on the raw embedding is about sqrt(D/d) times the
full-dim loss's. This measures it on a batch of augmented `shapes` images, for a freshly
initialised model (or `--checkpoint`): the backbone gradient norm of every dim's loss alone,
then each weighting's share per dim and its total against the single-dim baseline's.

    python experiments/grad_balance.py --seeds 0,1,2,3,4   # -> bench/results/grad_balance.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import load_checkpoint
from trainer.config import TrainConfig, training_weights
from trainer.data import shapes
from trainer.data.augment import AugmentParams, BatchTwoCrop
from trainer.loss import MoCoMatryoshkaLoss
from trainer.moco import build_moco

RESULTS = Path(__file__).parent / "results"
MODES = ("mean", "sqrt", "linear")


def backbone_grad_norms(cfg: TrainConfig, seed: int, checkpoint: Path | None) -> list[float]:
    """Norm of d(loss_d)/d(backbone) for every nesting dim d, on one augmented batch."""
    torch.manual_seed(seed)
    moco = build_moco(cfg, cfg.bn_splits)
    if checkpoint is not None:
        moco.encoder_q.load_state_dict(load_checkpoint(checkpoint).encoder_q)
        moco.encoder_k.load_state_dict(moco.encoder_q.state_dict())
    images, _ = shapes.generate(cfg.batch_size, cfg.image_size, seed)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    spec = cfg.model_spec()
    augment = BatchTwoCrop(AugmentParams(cfg.image_size), spec.mean, spec.std)
    im_q, im_k = augment(batch, torch.arange(len(batch)), seed, 0)
    q, k, _ = moco(im_q, im_k)
    _, per_dim = MoCoMatryoshkaLoss(cfg.nesting_list, cfg.temp)(q, k, moco.queue)
    params = list(moco.encoder_q.backbone.parameters())
    norms = []
    for loss in per_dim:
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))))
    return norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: fresh init)")
    ap.add_argument("--out", type=Path, default=RESULTS / "grad_balance.json")
    args = ap.parse_args()
    # the plain nested loss (every loss through q into the backbone), whatever the default
    # --prefix-grad: these are the gradients the weightings have to balance
    cfg = TrainConfig(prefix_grad=1.0)
    dims = cfg.nesting_list
    seeds = [int(s) for s in args.seeds.split(",")]
    norms = np.array([backbone_grad_norms(cfg, s, args.checkpoint) for s in seeds])
    full = norms[:, -1:]
    ratio = norms / full
    print(f"backbone gradient of each dim's loss / the full-dim loss's ({len(seeds)} seeds):")
    for d, m, s in zip(dims, ratio.mean(0), ratio.std(0), strict=True):
        print(f"  d={d:4d}: {m:5.2f} ± {s:.2f}   (sqrt(D/d) = {(dims[-1] / d) ** 0.5:5.2f})")
    weightings = {}
    for mode in MODES:
        w = np.array(training_weights(dims, mode))
        contrib = (w * ratio).mean(0)
        weightings[mode] = {
            "weights": w.round(4).tolist(),
            "share_per_dim": (contrib / contrib.sum()).round(3).tolist(),
            "total_vs_baseline": round(float(contrib.sum()), 3),
        }
        shares = " ".join(f"{s:.2f}" for s in weightings[mode]["share_per_dim"])
        print(
            f"{mode:>6}: share of the summed gradient per dim {shares}; "
            f"total {contrib.sum():.2f}x the baseline's"
        )
    result = {
        "what": "backbone grad norm of each nested loss alone, and each weighting's mix",
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "dims": dims,
        "seeds": seeds,
        "ratio_to_full_mean": ratio.mean(0).round(3).tolist(),
        "ratio_to_full_std": ratio.std(0).round(3).tolist(),
        "weightings": weightings,
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
