"""The prepared-dataset directory: round trip, split views, and clear errors for missing or damaged files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastprod.data.manifest import CLASSES, MANIFEST, DatasetError, Manifest, read_quarantine


def _write(directory, root, labels=(0, 1, 1, -1)):
    n = len(labels)
    columns = {
        "path": [f"img/{i}.jpg" for i in range(n)], "image_id": [f"{i}.jpg" for i in range(n)],
        "label": list(labels), "class_id": ["a" if x == 0 else "b" if x == 1 else "" for x in labels],
        "split": ["train", "train", "val", "test"][:n], "width": [10] * n, "height": [12] * n, "format": ["JPEG"] * n,
    }
    quarantine = [{"path": "img/bad.jpg", "split": "train", "class_id": "a", "reason": "truncated", "extra": 1}]
    return Manifest.write(directory, root=root, class_ids=["a", "b"], columns=columns, quarantine=quarantine, summary={"k": 1})


def test_round_trip_and_split_views(tmp_path):
    written = _write(tmp_path / "m", tmp_path / "root")
    loaded = Manifest.load(tmp_path / "m")
    assert loaded.root == (tmp_path / "root").resolve() and loaded.root.is_absolute()
    assert loaded.class_ids == ["a", "b"] and loaded.num_classes == 2
    assert len(loaded) == len(written) == 4 and loaded.splits == ["test", "train", "val"]
    train = loaded.split("train")
    assert len(train) == 2 and train.image_ids == ["0.jpg", "1.jpg"]
    assert train.paths == [str(loaded.root / "img/0.jpg"), str(loaded.root / "img/1.jpg")]
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 1]
    assert loaded.split("test").labels.tolist() == [-1]
    assert loaded.table.schema.field("label").type == "int32"
    assert read_quarantine(tmp_path / "m") == [{"path": "img/bad.jpg", "split": "train", "class_id": "a", "reason": "truncated"}]
    assert json.loads((tmp_path / "m" / "summary.json").read_text()) == {"k": 1}
    assert not list((tmp_path / "m").glob(".*.tmp"))


def test_missing_split_names_split_and_directory(tmp_path):
    manifest = _write(tmp_path / "m", tmp_path, labels=(0, 1))
    with pytest.raises(ValueError, match=r"split 'val' .* at .*m \(splits present: train\)"):
        manifest.split("val")


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        Manifest.load(tmp_path / "nowhere")
    _write(tmp_path / "m", tmp_path)
    (tmp_path / "m" / MANIFEST).unlink()
    with pytest.raises(DatasetError, match=f"{MANIFEST} is missing"):
        Manifest.load(tmp_path / "m")
    (tmp_path / "m" / CLASSES).unlink()
    with pytest.raises(DatasetError, match=f"{CLASSES} is missing"):
        Manifest.load(tmp_path / "m")


@pytest.mark.parametrize("content", ["{not json", '{"root": "/x"}', "[1, 2]"])
def test_corrupt_classes_file(tmp_path, content):
    _write(tmp_path / "m", tmp_path)
    (tmp_path / "m" / CLASSES).write_text(content)
    with pytest.raises(DatasetError, match=f"{CLASSES} is corrupt"):
        Manifest.load(tmp_path / "m")


def test_corrupt_parquet(tmp_path):
    _write(tmp_path / "m", tmp_path)
    (tmp_path / "m" / MANIFEST).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DatasetError, match=f"{MANIFEST} is corrupt"):
        Manifest.load(tmp_path / "m")


def test_missing_column_and_bad_labels(tmp_path):
    _write(tmp_path / "m", tmp_path)
    file = tmp_path / "m" / MANIFEST
    table = pq.read_table(file)
    pq.write_table(table.drop_columns(["label"]), file)
    with pytest.raises(DatasetError, match=r"lacks columns \['label'\]"):
        Manifest.load(tmp_path / "m")
    with pytest.raises(DatasetError, match="labels outside"):  # write reloads, so it checks too
        _write(tmp_path / "m2", tmp_path, labels=(0, 2))


def _held_in_ram(directory, n: int, classes: list[str]) -> int:
    """Bytes (Arrow's allocations plus Python's, by tracemalloc) that a manifest of `n` AliProducts-like rows
    holds once loaded with its train and val views."""
    import gc
    import tracemalloc

    import pyarrow as pa

    labels = np.random.default_rng(0).integers(0, len(classes), n)
    ids = [f"{i:09d}.jpg" for i in range(n)]
    columns = {"path": [f"train/{classes[y]}/{i}" for y, i in zip(labels, ids)], "image_id": ids,
               "label": labels.tolist(), "class_id": [classes[y] for y in labels],
               "split": ["val" if i % 20 == 0 else "train" for i in range(n)], "width": [32] * n, "height": [32] * n,
               "format": ["JPEG"] * n}
    Manifest.write(directory, root=directory / "root", class_ids=classes, columns=columns, quarantine=[], summary={})
    gc.collect()
    tracemalloc.start()
    arrow = pa.total_allocated_bytes()
    manifest = Manifest.load(directory)
    train, val = manifest.split("train"), manifest.split("val")
    gc.collect()
    held = pa.total_allocated_bytes() - arrow + tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(train) + len(val) == n and train.paths[0] == str(manifest.root / columns["path"][1])
    return held


def test_a_loaded_manifest_holds_under_200_bytes_per_image(tmp_path):
    """The cost of one more row (two sizes, 50,030 classes): ~140 B in Arrow columns and NumPy labels. A
    Python str per path and id would be ~180 B more."""
    classes = [f"{c:05d}" for c in range(50_030)]
    per_row = (_held_in_ram(tmp_path / "big", 25_000, classes) - _held_in_ram(tmp_path / "small", 5_000, classes)) / 20_000
    assert 0 < per_row < 200, per_row
