"""The served encoder as an ONNX graph, and its check against PyTorch with onnxruntime.

In:  `pixel_values`, float32 [batch, 3, S, S]: RGB, resized and centre-cropped, /255,
     minus mean, over std (preprocessor_config.json; batch is dynamic).
Out: `embeddings`, float32 [batch, D]: the full-dim served embedding (rotation applied),
     L2-normalised. A d-dim embedding is its first d values, L2-normalised again (the same
     vector /v1/embed returns at dim d).

Exported with torch's TorchScript-based exporter (`dynamo=False`): the dynamo exporter needs
onnxscript, which nothing else here uses, and both give the same graph for these convnets.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.encoder import load_encoder
from core.nesting import truncate_normalize_np
from core.preprocess import EvalPreprocess
from core.served import ServedModel

INPUT, OUTPUT = "pixel_values", "embeddings"
OPSET = 17


class NormalizedEncoder(torch.nn.Module):
    """Encoder + L2 norm: what the graph computes."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(pixel_values), dim=-1)


def export_onnx(served: ServedModel, path: Path) -> Path:
    size = served.model.image_size
    module = NormalizedEncoder(load_encoder(served)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, size, size),),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    import onnx

    graph = onnx.load(str(path))
    # the exporter leaves the embedding width symbolic: state it, as config.pbtxt does
    (out,) = graph.graph.output
    out.type.tensor_type.shape.dim[1].dim_value = served.model.full_dim
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def compare_onnx(served: ServedModel, path: Path, images: list) -> dict:
    """onnxruntime's embeddings of `images` (PIL images, files' bytes decoded) against the
    PyTorch encoder's: max abs difference of the full-dim embedding, and per nesting dim the
    smallest cosine between the two truncated, renormalised embeddings."""
    import onnxruntime as ort

    pre = EvalPreprocess.of(served.model)
    x = torch.stack([pre(im) for im in images])
    with torch.no_grad():
        reference = NormalizedEncoder(load_encoder(served)).eval()(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
    cosine = {
        str(d): float(
            np.min(np.sum(truncate_normalize_np(got, d) * truncate_normalize_np(reference, d), 1))
        )
        for d in served.model.nesting_list
    }
    return {
        "images": len(images),
        "onnxruntime": ort.__version__,
        "max_abs_diff": float(np.abs(got - reference).max()),
        "min_cosine_per_dim": cosine,
    }
