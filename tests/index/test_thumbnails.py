"""Thumbnails: encoding, the blob + log store (durable, torn tails), the index build."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support import build_index, split, train_tiny

from index.thumbnails import BLOB, LOG, SIZE, Thumbnails, make_thumbnail


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP"
    return image.convert("RGB")


def test_make_thumbnail_fits_the_size_and_keeps_small_images():
    big = Image.new("RGB", (640, 320), (200, 30, 30))
    thumb = decode(make_thumbnail(big))
    assert thumb.size == (SIZE, SIZE // 2)
    assert np.abs(np.asarray(thumb, np.int16) - (200, 30, 30)).max() < 12
    small = Image.new("L", (32, 20), 90)
    assert decode(make_thumbnail(small)).size == (32, 20)


def test_a_thumbnail_never_copies_an_upright_rgb_image_whole(monkeypatch):
    """An image item's add made three whole copies (turn, convert, shrink): a 1 x 16,777,216
    strip took 578 MB. An upright RGB image is now shrunk as decoded."""
    copies = []
    copy, convert = Image.Image.copy, Image.Image.convert

    def spy_copy(self):
        copies.append(self.size)
        return copy(self)

    def spy_convert(self, *args, **kwargs):
        copies.append(self.size)
        return convert(self, *args, **kwargs)

    strip = Image.fromarray(np.full((100_000, 1, 3), 120, np.uint8))
    monkeypatch.setattr(Image.Image, "copy", spy_copy)
    monkeypatch.setattr(Image.Image, "convert", spy_convert)
    thumb = make_thumbnail(strip)
    assert [c for c in copies if c[0] * c[1] > SIZE * SIZE] == []  # main: 2 whole copies
    monkeypatch.undo()
    assert decode(thumb).size == (1, SIZE)


def test_a_thumbnail_is_turned_upright_by_its_exif_orientation():
    wide = Image.new("RGB", (200, 100), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown tall
    buf = io.BytesIO()
    wide.save(buf, "JPEG", exif=exif.tobytes())
    assert decode(make_thumbnail(Image.open(buf))).size == (SIZE // 2, SIZE)
    assert decode(make_thumbnail(wide)).size == (SIZE, SIZE // 2)


def test_store_round_trip_reopen_and_readd(tmp_path):
    thumbs = Thumbnails(tmp_path, writable=True)
    thumbs.add([("a", b"alpha"), ("b", b"bravo!")])
    thumbs.add([("c", b"c")])
    assert (thumbs.get("a"), thumbs.get("b"), thumbs.get("c")) == (b"alpha", b"bravo!", b"c")
    assert thumbs.get("missing") is None
    first = thumbs.etag(thumbs.by_id("a"))
    thumbs.add([("a", b"again")])  # a re-added id: the newer record wins
    assert thumbs.get("a") == b"again" and thumbs.etag(thumbs.by_id("a")) != first
    thumbs.close()
    reader = Thumbnails(tmp_path, writable=False)
    assert len(reader) == 3 and reader.get("a") == b"again" and reader.get("b") == b"bravo!"
    with pytest.raises(RuntimeError, match="read-only"):
        reader.add([("d", b"d")])
    reader.close()


def test_torn_log_tail_and_orphan_bytes_are_ignored(tmp_path):
    thumbs = Thumbnails(tmp_path, writable=True)
    thumbs.add([("a", b"alpha")])
    thumbs.close()
    # A crash after the bytes were written but mid-way through their log record.
    with open(tmp_path / BLOB, "ab") as f:
        f.write(b"orphan")
    with open(tmp_path / LOG, "ab") as f:
        f.write(b'0badc0de {"ids":["b"],"offs')
    again = Thumbnails(tmp_path, writable=True)
    assert again.get("a") == b"alpha" and again.get("b") is None
    again.add([("b", b"bravo")])
    again.close()
    final = Thumbnails(tmp_path, writable=False)
    assert final.get("a") == b"alpha" and final.get("b") == b"bravo"


def test_folder_without_thumbnails_reads_as_empty_and_gets_files_on_first_add(tmp_path):
    reader = Thumbnails(tmp_path, writable=False)
    assert len(reader) == 0 and reader.get("x") is None
    writer = Thumbnails(tmp_path, writable=True)
    writer.add([])
    assert not (tmp_path / BLOB).exists() and not (tmp_path / LOG).exists()
    writer.add([("x", b"xray")])
    assert writer.get("x") == b"xray" and (tmp_path / BLOB).exists()
    writer.close()


def test_index_build_stores_a_thumbnail_of_every_item(tiny_dataset, tmp_path):
    checkpoint = train_tiny(tiny_dataset, tmp_path / "run")
    index = build_index(checkpoint, tiny_dataset, tmp_path / "index", limit=40)
    ds = split(tiny_dataset).select(range(40))
    thumbs = Thumbnails(index, writable=False)
    assert len(thumbs) == 40
    images = [np.asarray(img.convert("RGB"), np.float32) for img in ds["image"]]
    for i in (0, 17, 39):
        got = np.asarray(decode(thumbs.get(f"train-{i}")), np.float32)
        assert got.shape == images[i].shape  # 32 px images are stored at their own size
        errors = [np.abs(got - ref).mean() for ref in images]  # lossy: WebP halves chroma
        assert int(np.argmin(errors)) == i and errors[i] < 0.5 * sorted(errors)[1]
    thumbs.close()
