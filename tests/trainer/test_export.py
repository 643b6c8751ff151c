"""python -m trainer.export: the exported folder serves the checkpoint's embeddings exactly,
ONNX agrees with PyTorch under onnxruntime on image files, and the Triton config parses
with Triton's own model-config protobuf."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from support import build_index, png_b64, split, train_tiny, write_image_folder

from core.checkpoint import CheckpointError, load_checkpoint
from core.encoder import load_encoder
from core.export_folder import load_folder
from server.app import create_app
from server.settings import Settings
from trainer.export.cli import export, main


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    path = train_tiny(tiny_dataset, tmp_path_factory.mktemp("run"))
    eval_rows = [
        {"dim": d, "knn_top1": 0.5 + d / 1000, "map_at_k": 0.25, "k": 20, "map_k": 10}
        for d in load_checkpoint(path).model.nesting_list
    ]
    (path.parent / "eval.json").write_text(
        json.dumps({"rotation": "pca", "n_train": 320, "n_test": 80, "metrics": eval_rows})
    )
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("photos"), per_class=6)


@pytest.fixture(scope="module")
def exported(checkpoint, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    report = export(checkpoint, out, ["safetensors", "onnx"], images=photos)
    return out, report


def test_the_folder_holds_only_what_serving_needs(exported, checkpoint):
    out, report = exported
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    ckpt = load_checkpoint(checkpoint)
    assert keys == set(ckpt.encoder_q) | {"rotation", "calibration.low", "calibration.high"}
    assert report["out_bytes"] < report["checkpoint_bytes"]
    served = load_folder(out)
    assert served.fingerprint == ckpt.fingerprint
    assert served.calibration is not None and served.calibration.dims == tuple(
        ckpt.model.nesting_list
    )
    assert np.array_equal(served.calibration.low, ckpt.calibration.low)
    x = torch.randn(4, 3, ckpt.model.image_size, ckpt.model.image_size)
    with torch.no_grad():
        assert torch.equal(load_encoder(served)(x), load_encoder(ckpt)(x))
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 32, "width": 32}
    assert pre["image_mean"] == list(ckpt.model.mean)


def test_model_card_metadata_carries_the_evaluation(exported, checkpoint):
    out, _ = exported
    text = (out / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["pipeline_tag"] == "image-feature-extraction"
    results = meta["model-index"][0]["results"]
    knn = {m["name"]: m["value"] for m in results[0]["metrics"]}
    assert knn["kNN top-1 at 16 dims"] == 0.516
    assert [m["value"] for m in results[1]["metrics"]] == [0.25] * 4
    for heading in ("## Training data and recipe", "## Intended use", "## Limits"):
        assert heading in text


def test_onnx_agrees_with_pytorch_on_image_files(exported):
    out, report = exported
    check = report["onnx_check"]
    assert check == json.loads((out / "onnx_check.json").read_text())
    assert check["images"] == 18
    assert check["max_abs_diff"] < 1e-5
    assert min(check["min_cosine_per_dim"].values()) > 0.99999
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    (inp,), (outp,) = graph.input, graph.output
    assert inp.name == "pixel_values" and outp.name == "embeddings"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    assert [d.dim_value for d in outp.type.tensor_type.shape.dim[1:]] == [64]
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # any batch size
        (e,) = session.run(None, {"pixel_values": np.zeros((n, 3, 32, 32), np.float32)})
        assert e.shape == (n, 64) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_triton_repository_parses_with_tritons_protobuf(checkpoint, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    export(checkpoint, tmp_path / "repo", ["triton"], name="moco")
    config = text_format.Parse((tmp_path / "repo/moco/config.pbtxt").read_text(), mc.ModelConfig())
    assert (tmp_path / "repo/moco/1/model.onnx").is_file()
    assert config.name == "moco" and config.backend == "onnxruntime"
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    (inp,), (outp,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("pixel_values", mc.TYPE_FP32, [3, 32, 32])
    assert (outp.name, outp.data_type, list(outp.dims)) == ("embeddings", mc.TYPE_FP32, [64])


def test_the_server_serves_the_folder_with_the_checkpoints_embeddings_and_index(
    exported, checkpoint, tiny_dataset, tmp_path
):
    out, _ = exported
    index = build_index(checkpoint, tiny_dataset, tmp_path / "index", limit=40)
    ds = split(tiny_dataset, "test")
    images = [png_b64(ds[i]["image"]) for i in range(4)]
    answers = []
    for source in (checkpoint, out):
        settings = Settings(
            checkpoint=source, index_dir=index, read_only=True, torch_threads=1, faiss_threads=1
        )
        with TestClient(create_app(settings)) as c:
            body = {"images": images, "encoding_format": "base64", "output_dtype": "float"}
            answers.append(
                (
                    c.post("/v1/embed", json=body).json()["embeddings"],
                    c.post("/v1/embed", json={**body, "output_dtype": "int8"}).json(),
                    c.get("/v1/model").json()["fingerprint"],
                    c.post("/v1/search", json={"images": images, "k": 3}).json(),
                )
            )
    assert answers[0] == answers[1]
    floats = np.frombuffer(base64.b64decode(answers[0][0][0]), "<f4")
    assert floats.shape == (64,)


def test_a_changed_or_incomplete_folder_is_refused(exported, tmp_path):
    out, _ = exported
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.safetensors", "preprocessor_config.json"):
        (bad / name).write_bytes((out / name).read_bytes())
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        load_folder(bad)
    config = json.loads((out / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "fingerprint": "0" * 16}))
    with pytest.raises(CheckpointError, match="changed after export"):
        load_folder(bad)


def test_cli_refuses_an_unknown_format(checkpoint, tmp_path, capsys):
    from core.cli import UsageError

    with pytest.raises(UsageError, match="allowed onnx, safetensors, triton"):
        main([str(checkpoint), str(tmp_path / "x"), "--format", "torchscript"])
