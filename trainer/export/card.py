"""README.md model card in the Hugging Face Hub's layout: YAML metadata (tags, datasets and a
`model-index` of the evaluated per-dim kNN top-1 and mAP@10), then what a reader checks
before using the model: the numbers and where they come from, training data and recipe,
intended use, limits, how to load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.checkpoint import Checkpoint
from core.quantize import bytes_per_vector
from trainer.evaluate.report import dtype_table

RECIPE_KEYS = (
    "arch",
    "epochs",
    "batch_size",
    "queue_size",
    "lr",
    "temperature",
    "momentum",
    "nesting_list",
    "loss_weights",
    "image_size",
    "rotation",
    "seed",
)


def _yaml_value(v: Any) -> str:
    return json.dumps(v)  # JSON scalars and lists are valid YAML flow values


def metadata(name: str, ckpt: Checkpoint, result: dict | None) -> str:
    dataset = str(ckpt.train.get("dataset", "unknown"))
    lines = [
        "---",
        "library_name: moco-matryoshka",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        *(f"- {t}" for t in ("image-feature-extraction", "matryoshka", "moco", "onnx")),
        "datasets:",
        f"- {_yaml_value(dataset)}",
    ]
    if result:
        lines += ["metrics:", "- accuracy", "- map", "model-index:", f"- name: {name}"]
        lines += ["  results:"]
        split = {"name": dataset, "type": dataset, "split": "test"}
        for kind, task, metric, key in (
            ("image-classification", "kNN top-1", "accuracy", "knn_top1"),
            ("image-feature-extraction", "retrieval mAP@10", "map", "map_at_k"),
        ):
            lines += [
                "  - task:",
                f"      type: {kind}",
                f"      name: {task}",
                "    dataset:",
                *(f"      {k}: {_yaml_value(v)}" for k, v in split.items()),
                "    metrics:",
            ]
            for row in result["metrics"]:
                lines += [
                    f"    - type: {metric}",
                    f"      name: {task} at {row['dim']} dims",
                    f"      value: {round(float(row[key]), 4)}",
                ]
    return "\n".join([*lines, "---", ""])


def quality_table(result: dict) -> str:
    rows = ["| dim | kNN top-1 | mAP@10 | bytes (float32) |", "|---:|---:|---:|---:|"]
    for r in result["metrics"]:
        b = bytes_per_vector(r["dim"], "float")
        rows.append(f"| {r['dim']} | {r['knn_top1']:.3f} | {r['map_at_k']:.3f} | {b} |")
    return "\n".join(rows)


def model_card(name: str, ckpt: Checkpoint, result: dict | None, formats: list[str]) -> str:
    m = ckpt.model
    data = ckpt.data or {}
    recipe = {k: ckpt.train[k] for k in RECIPE_KEYS if k in ckpt.train}
    parts = [
        metadata(name, ckpt, result),
        f"# {name}",
        "",
        f"A MoCo v2 + Matryoshka image embedding model ({m.arch}, {m.full_dim} dims, "
        f"{m.image_size}x{m.image_size} input). Every prefix of the embedding is itself an "
        f"embedding: the first d values, L2-normalised, for d in {m.nesting_list}. "
        f"Exported from step {ckpt.step} (epoch {ckpt.epoch}); fingerprint "
        f"`{ckpt.fingerprint}` (an index built from the checkpoint is served by this folder).",
        "",
        "## Evaluation",
        "",
    ]
    if result:
        parts += [
            f"kNN top-1 (weighted vote, k={result['metrics'][0].get('k', 20)}) and mAP@10 of "
            f"the {result.get('n_test', '?')} test images against the "
            f"{result.get('n_train', '?')} train images as the bank, at every nesting dim "
            f"(`python -m trainer.evaluate`, rotation {result.get('rotation', '?')}):",
            "",
            quality_table(result),
            "",
        ]
        table = dtype_table(result)
        if table:
            parts += [
                "Per output type (`output_dtype`; each cell kNN top-1 / mAP@10 (bytes per "
                "vector): int8/uint8 decoded with the calibrated grid, binary/ubinary compared "
                "by Hamming distance, binary + float rerank: a Hamming shortlist of 10 x k "
                "reranked by the full-dim float cosine):",
                "",
                table,
                "",
            ]
    else:
        parts += ["Not evaluated: no eval.json was given to the exporter.", ""]
    parts += [
        "## Training data and recipe",
        "",
        f"- dataset: `{ckpt.train.get('dataset', 'unknown')}`"
        + (
            f" ({data['n_train']} train / {data['n_test']} test images)"
            if "n_train" in data and "n_test" in data
            else ""
        ),
        *(f"- {k}: `{json.dumps(v)}`" for k, v in recipe.items()),
        "",
        "## Intended use",
        "",
        "Image-to-image similarity: nearest-neighbour search, deduplication, clustering and "
        "kNN classification within the kind of images it was trained on. Pick a dim by the "
        "table above: small prefixes (or binary vectors) to shortlist, the full dim to rerank.",
        "",
        "## Limits",
        "",
        "- Self-supervised on one dataset: no text, no labels, no notion of classes beyond "
        "what the images share; quality outside that image domain is not measured.",
        f"- Input is fixed at {m.image_size}x{m.image_size} after a centre crop: content near "
        "the edges of non-square images is not seen.",
        "- The numbers above are on the run's own held-out split, small for some datasets: "
        "re-evaluate on your images before relying on them.",
        "",
        "## Files and how to use them",
        "",
        "- `model.safetensors` + `config.json`: the query encoder, the served rotation and the "
        "int8 grid; `core.export_folder.load_folder(DIR)` rebuilds it without training code, "
        "and `python -m server --checkpoint DIR` serves it.",
        "- `preprocessor_config.json`: resize, crop, rescale and normalise, in transformers' "
        "keys (`moco_preprocess` states the exact rule).",
    ]
    if "onnx" in formats:
        parts += [
            "- `model.onnx`: in `pixel_values` float32 [batch, 3, S, S] (preprocessed as above),"
            " out `embeddings` float32 [batch, D], L2-normalised; prefix d: `e[:, :d]` "
            "re-normalised.",
        ]
    return "\n".join([*parts, ""])


def read_eval(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())
