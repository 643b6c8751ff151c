import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import UsageError
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess
from trainer.config import TrainConfig
from trainer.data import shapes
from trainer.data.augment import AugmentParams, BatchTwoCrop, TwoCropTransform
from trainer.data.datasets import (
    SHAPES_VERSION,
    DecodedImages,
    EpochSampler,
    TrainData,
    load_dataset_dict,
    load_splits,
    shapes_dataset,
)


def test_shapes_is_deterministic_and_cached(tmp_path):
    a_img, a_lab = shapes.generate(50, 32, seed=7)
    b_img, b_lab = shapes.generate(50, 32, seed=7)
    c_img, _ = shapes.generate(50, 32, seed=8)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert set(a_lab.tolist()) == set(range(len(shapes.CLASSES)))
    dd = shapes_dataset(tmp_path, 32, seed=0)
    assert (tmp_path / f"shapes-v{SHAPES_VERSION}-32px-seed0" / "dataset_dict.json").exists()
    again = shapes_dataset(tmp_path, 32, seed=0)
    assert np.array_equal(np.asarray(dd["test"][3]["image"]), np.asarray(again["test"][3]["image"]))


def test_shapes_generated_by_two_runs_at_once_keeps_the_first_copy(tmp_path, monkeypatch):
    """Two runs of a new seed (the ablation harness starts them together): the slower one's
    rename meets the faster one's folder; it must load that folder, not fail."""
    import trainer.data.datasets as data_module

    monkeypatch.setattr(data_module, "SHAPES_SIZES", {"train": 20, "test": 10})
    final = tmp_path / f"shapes-v{SHAPES_VERSION}-32px-seed3"
    real_save = data_module.datasets.DatasetDict.save_to_disk

    def other_run_finishes_first(self, path, **kw):
        real_save(self, str(final))
        real_save(self, path, **kw)

    monkeypatch.setattr(data_module.datasets.DatasetDict, "save_to_disk", other_run_finishes_first)
    dd = shapes_dataset(tmp_path, 32, seed=3)
    assert len(dd["train"]) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_shapes_train_split_does_not_depend_on_the_test_size(tmp_path, monkeypatch):
    """v2 only enlarged the test split: checkpoints trained on v1 saw the same train images."""
    import trainer.data.datasets as data_module

    monkeypatch.setattr(data_module, "SHAPES_SIZES", {"train": 30, "test": 10})
    small = shapes_dataset(tmp_path / "a", 32, seed=5)
    monkeypatch.setattr(data_module, "SHAPES_SIZES", {"train": 30, "test": 40})
    large = shapes_dataset(tmp_path / "b", 32, seed=5)
    assert len(small["test"]) == 10 and len(large["test"]) == 40
    for i in (0, 17, 29):
        assert np.array_equal(
            np.asarray(small["train"][i]["image"]), np.asarray(large["train"][i]["image"])
        )
    assert small["train"]["label"] == large["train"]["label"]


def test_data_seed_fixes_the_shapes_dataset_across_seeds(tmp_path, monkeypatch):
    import trainer.data.datasets as data_module

    monkeypatch.setattr(data_module, "SHAPES_SIZES", {"train": 20, "test": 10})

    def first_image(**kw):
        dd = load_dataset_dict(TrainConfig(dataset="shapes", cache_dir=tmp_path, **kw))
        return np.asarray(dd["train"][0]["image"])

    assert np.array_equal(first_image(seed=1, data_seed=0), first_image(seed=2, data_seed=0))
    assert np.array_equal(first_image(seed=0), first_image(seed=3, data_seed=0))
    assert not np.array_equal(first_image(seed=1), first_image(seed=2))


def _odd_images():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    return {
        "gray": Image.fromarray(rgb[..., 0]),
        "rgba": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "cmyk": Image.fromarray(rgb).convert("CMYK"),
        "tiny": Image.fromarray(rgb[:3, :2]),
        "palette": Image.fromarray(rgb).convert("P"),
        "sixteen": Image.fromarray(rgb[..., 0].astype(np.uint16) * 200),
    }


def test_image_folder_with_odd_modes(tmp_path, tiny_config):
    for c, cls in enumerate(("cats", "dogs")):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for name, im in _odd_images().items():
            ext = "tiff" if name in ("cmyk", "sixteen") else "png"
            im.save(tmp_path / "imgs" / cls / f"{name}{c}.{ext}")
    cfg = tiny_config(dataset=str(tmp_path / "imgs"))
    train, test = load_splits(cfg)
    assert len(train) + len(test) == 12
    decoded = DecodedImages(train, "image", "label", 32).preload()
    assert decoded.images.shape == (len(train), 3, 32, 32)
    assert decoded.images.dtype == torch.uint8


def test_saved_dataset_with_custom_columns(tmp_path, tiny_config):
    import datasets

    images = [np.asarray(im.convert("RGB").resize((20, 20))) for im in _odd_images().values()]
    ds = datasets.Dataset.from_dict({"img": images * 2, "y": list(range(12))})
    ds.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UsageError, match="no column 'image'"):
        load_splits(tiny_config(dataset=str(tmp_path / "saved")))
    train, test = load_splits(
        tiny_config(dataset=str(tmp_path / "saved"), image_column="img", label_column="y")
    )
    assert len(train) == 10 and len(test) == 2  # one split -> deterministic 90/10

    def held_out(**kw) -> list[int]:
        cfg = tiny_config(dataset=str(tmp_path / "saved"), image_column="img", label_column="y")
        return load_splits(cfg.model_copy(update=kw))[1]["y"]

    assert held_out(seed=1, data_seed=0) == held_out(seed=2, data_seed=0) == test["y"]
    assert any(held_out(seed=s) != test["y"] for s in (1, 2, 3))


def test_imagenet_100_alias_goes_to_the_hub(tiny_config, monkeypatch):
    import datasets

    seen = {}

    def fake_load_dataset(name, **kw):
        seen["name"] = name
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(UsageError, match="imagenet-100: cannot load it"):
        load_splits(tiny_config(dataset="imagenet-100"))
    assert seen["name"] == "clane9/imagenet-100"


def test_eval_preprocess_handles_every_mode():
    pre = EvalPreprocess(32, IMAGENET_MEAN, IMAGENET_STD)
    for im in _odd_images().values():
        out = pre(im)
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_augmentation_is_per_sample_deterministic():
    params = AugmentParams(32)
    aug = BatchTwoCrop(params, IMAGENET_MEAN, IMAGENET_STD)
    images = torch.from_numpy(shapes.generate(8, 32, 0)[0]).permute(0, 3, 1, 2).contiguous()
    idx = torch.arange(8)
    q, k = aug(images, idx, seed=0, epoch=0)
    assert q.shape == k.shape == (8, 3, 32, 32)
    assert not torch.allclose(q, k)
    # The same sample gets the same views whatever batch it sits in.
    q2, _ = aug(images[[5, 2]], idx[[5, 2]], seed=0, epoch=0)
    torch.testing.assert_close(q2, q[[5, 2]], rtol=1e-5, atol=1e-5)
    q3, _ = aug(images, idx, seed=0, epoch=1)
    assert not torch.allclose(q3, q)


def test_v2_two_crop_is_per_sample_deterministic():
    t = TwoCropTransform(AugmentParams(96), IMAGENET_MEAN, IMAGENET_STD)
    img = torch.from_numpy(shapes.generate(1, 110, 0)[0][0]).permute(2, 0, 1).contiguous()
    a = t(img, seed=0, epoch=0, index=4)
    b = t(img, seed=0, epoch=0, index=4)
    c = t(img, seed=0, epoch=0, index=5)
    assert a[0].shape == (3, 96, 96)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[0], c[0])


def test_sampler_splits_global_batches_across_ranks():
    one = list(EpochSampler(100, 8, rank=0, world_size=1, seed=3))
    r0 = list(EpochSampler(100, 4, rank=0, world_size=2, seed=3))
    r1 = list(EpochSampler(100, 4, rank=1, world_size=2, seed=3))
    for b in range(len(r0) // 4):
        assert sorted(one[b * 8 : b * 8 + 8]) == sorted(
            r0[b * 4 : b * 4 + 4] + r1[b * 4 : b * 4 + 4]
        )
    s = EpochSampler(100, 8, rank=0, world_size=1, seed=3)
    s.set_epoch(0, start_step=2)
    assert list(s) == one[16:]


@pytest.mark.parametrize("mode", ["batch", "worker"])
def test_train_data_yields_two_views(tiny_config, mode):
    cfg = tiny_config(augment=mode)
    train, _ = load_splits(cfg)
    data = TrainData(cfg, train, 0, 1, torch.device("cpu"))
    q, k = next(iter(data.epoch(0)))
    assert q.shape == k.shape == (32, 3, 32, 32)


def test_auto_augment_batches_a_real_dataset_that_fits_in_memory(tiny_config, monkeypatch):
    """A saved (non-shapes) dataset on the CPU takes the fast batched path, preloaded."""
    cfg = tiny_config(augment="auto")
    train, _ = load_splits(cfg)
    data = TrainData(cfg, train, 0, 1, torch.device("cpu"))
    assert data.mode == "batch"
    assert data.loader.dataset.images is not None  # decoded once, held in memory
    monkeypatch.setattr("trainer.data.datasets.PRELOAD_BYTES", 1000)
    assert TrainData(cfg, train, 0, 1, torch.device("cpu")).mode == "worker"


def test_val_fraction_carves_validation_from_train_and_skips_test(tiny_config):
    full_train, test = load_splits(tiny_config())
    cfg = tiny_config(val_fraction=0.25)
    train, val = load_splits(cfg)
    assert (len(train), len(val)) == (240, 80)
    ids = lambda ds: {bytes(np.asarray(x)) for x in ds["image"]}  # noqa: E731
    assert ids(train) | ids(val) == ids(full_train)
    assert not ids(train) & ids(val)
    assert not ids(val) & ids(test)
    assert load_splits(tiny_config(val_fraction=0.25, seed=5))[1]["label"] == val["label"]
