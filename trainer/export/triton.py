"""A Triton Inference Server model repository around the ONNX graph:

  <repo>/<name>/config.pbtxt     onnxruntime backend, dynamic batching, the I/O names and dims
  <repo>/<name>/1/model.onnx     version 1

`max_batch_size` > 0, so the dims below leave out the batch axis (Triton's convention): in
`pixel_values` [3, S, S] FP32, out `embeddings` [D] FP32 (trainer.export.onnx_model).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from core.served import ServedModel
from trainer.export.onnx_model import INPUT, OUTPUT

MAX_BATCH = 64
QUEUE_DELAY_US = 2000


def config_pbtxt(name: str, served: ServedModel) -> str:
    s, d = served.model.image_size, served.model.full_dim
    dims = ", ".join(map(str, served.model.nesting_list))
    return f"""# {name}: MoCo-Matryoshka image embeddings (docs/EXPORT.md).
# in  {INPUT}: RGB resized/centre-cropped to {s}x{s}, /255, (x - mean) / std
#     (preprocessor_config.json)
# out {OUTPUT}: the {d}-dim embedding, L2-normalised; for dim d in [{dims}] take the
#     first d values and L2-normalise again.
name: "{name}"
backend: "onnxruntime"
max_batch_size: {MAX_BATCH}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, {s}, {s} ]
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {d} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
"""


def write_repository(repo: Path, name: str, served: ServedModel, onnx_path: Path) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(name, served))
    return model_dir
