"""The index build on a user's image folder: the trainer's own split, ids from file paths."""

from __future__ import annotations

import json

import pytest
from support import PHOTO_CLASSES, train_on_folder, train_tiny, write_image_folder

from core.checkpoint import load_checkpoint
from core.cli import UsageError
from index.store import IndexStore, read_manifest
from trainer.build_index import IndexBuildConfig, build_index_folder, main
from trainer.checkpointing import train_config
from trainer.data.datasets import load_splits
from trainer.data.items import file_paths, path_id

CLASSES = PHOTO_CLASSES
PER_CLASS = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("photos") / "photos", PER_CLASS)


@pytest.fixture(scope="module")
def checkpoint(folder, tmp_path_factory):
    return train_on_folder(folder, tmp_path_factory.mktemp("run"))


def trainer_paths(checkpoint, folder, part: str) -> list[str]:
    """The file names of the trainer's own part, read through load_splits itself."""
    run = train_config(load_checkpoint(checkpoint))
    train_ds, test_ds = load_splits(run)
    ds = train_ds if part == "train" else test_ds
    return file_paths(ds, run.image_column, folder)


def build(checkpoint, folder, out, split: str, **kw) -> list[dict]:
    build_index_folder(
        IndexBuildConfig(
            checkpoint=checkpoint, dataset=str(folder), out=out, split=split, batch_size=16, **kw
        )
    )
    store = IndexStore(out, read_manifest(out), writable=False)
    try:
        return [store.item(r) for r in range(len(store))]
    finally:
        store.close()


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_folder_index_is_exactly_the_trainers_part(checkpoint, folder, tmp_path, split, capsys):
    items = build(checkpoint, folder, tmp_path / "index", split)
    parts = ["train", "test"] if split == "all" else [split]
    expected = [p for part in parts for p in trainer_paths(checkpoint, folder, part)]
    assert len(expected) == {"train": 43, "test": 5, "all": 48}[split]  # the seeded 90/10
    assert [it["metadata"]["path"] for it in items] == expected
    assert [it["id"] for it in items] == [p.replace("/", ":") for p in expected]
    assert all(it["metadata"]["class"] == it["metadata"]["path"].split("/")[0] for it in items)
    assert all(CLASSES[it["label"]] == it["metadata"]["class"] for it in items)
    out = capsys.readouterr().out
    said = f"indexing --split {split} of {folder}: {len(expected)} images; the trainer's "
    assert said + "partition: 43 train, 5 test (held out)" in out
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["split"] == split and sum(manifest["parts"].values()) == len(expected)


def test_train_and_test_do_not_overlap_and_ids_are_stable(checkpoint, folder, tmp_path):
    train_items = build(checkpoint, folder, tmp_path / "a", "train")
    test_items = build(checkpoint, folder, tmp_path / "b", "test")
    again = build(checkpoint, folder, tmp_path / "c", "train", thumbnail_size=0)
    train_ids = {it["id"] for it in train_items}
    assert not train_ids & {it["id"] for it in test_items}
    assert len(train_ids | {it["id"] for it in test_items}) == len(CLASSES) * PER_CLASS
    assert [it["id"] for it in again] == [it["id"] for it in train_items]


def test_thumbnails_are_stored_under_the_path_ids(checkpoint, folder, tmp_path):
    items = build(checkpoint, folder, tmp_path / "index", "test")
    store = IndexStore(tmp_path / "index", read_manifest(tmp_path / "index"), writable=False)
    try:
        assert all(store.thumbnail(it["id"]) for it in items)
    finally:
        store.close()


def test_saved_dataset_keeps_row_ids_of_the_trainers_parts(tiny_dataset, tmp_path):
    ckpt = train_tiny(tiny_dataset, tmp_path / "run")
    items = build(ckpt, tiny_dataset, tmp_path / "index", "all", limit=330)
    ids = [it["id"] for it in items]
    assert ids[:320] == [f"train-{i}" for i in range(320)]
    assert ids[320:] == [f"test-{i}" for i in range(10)]
    assert all("path" not in (it["metadata"] or {}) for it in items)


def test_unknown_split_is_one_line_naming_the_choices(checkpoint, folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--dataset",
                str(folder),
                "--out",
                str(tmp_path / "i"),
                "--split",
                "validation",
            ]
        )
    assert e.value.code == 2
    assert "train, test, all" in capsys.readouterr().err.replace("'", "")


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("cat/img_001.jpg", "cat:img_001.jpg"),
        ("a/b/c.png", "a:b:c.png"),
        ("cat/my photo.jpg", "cat:my_photo.jpg@"),
        ("cat/" + "x" * 200 + ".jpg", "cat:xxx"),
    ],
)
def test_path_ids_are_safe_and_unique(relative, expected):
    got = path_id(relative)
    assert got.startswith(expected) and len(got) <= 128
    assert path_id("cat/my_photo.jpg") != path_id("cat/my photo.jpg")


def test_limit_counts_across_parts(checkpoint, folder, tmp_path):
    items = build(checkpoint, folder, tmp_path / "index", "all", limit=45)
    assert len(items) == 45
    with pytest.raises(UsageError):
        build(checkpoint, folder, tmp_path / "index", "all", image_column="nope", force=True)


def test_rebuild_with_another_split_needs_force(checkpoint, folder, tmp_path):
    build(checkpoint, folder, tmp_path / "index", "test")
    with pytest.raises(UsageError, match=r"holds --split test.*--force"):
        build(checkpoint, folder, tmp_path / "index", "train")
    assert len(build(checkpoint, folder, tmp_path / "index", "train", force=True)) == 43
