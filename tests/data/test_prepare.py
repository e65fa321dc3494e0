"""Dataset ingestion: the three layouts, quarantine with reasons, wrong JSON, the probe cache, held-out val."""

from __future__ import annotations

import collections
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastprod.data.images import load_rgb
from fastprod.data.manifest import DatasetError, Manifest, read_quarantine
from fastprod.data.prepare import FEW_CLASSES, plot_class_sizes, prepare


def _image(path: Path, kind: str = "jpeg", shade: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((20, 24, 3), shade, np.uint8)
    rgb[5:15, 6:18] = (200, 30, 40)
    buf = io.BytesIO()
    if kind == "jpeg":
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    elif kind == "png":
        Image.fromarray(rgb).save(buf, "PNG")
    elif kind == "gray":
        Image.fromarray(rgb).convert("L").save(buf, "JPEG")
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG")
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, np.full((20, 24), 128, np.uint8)]), "RGBA").save(buf, "PNG")
    elif kind == "palette":
        Image.fromarray(rgb).quantize(8).save(buf, "PNG", transparency=0)
    elif kind == "truncated":
        big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(big).save(buf, "JPEG")
        buf = io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "garbage":
        buf.write(b"\x00\x01 definitely not an image " * 10)
    path.write_bytes(buf.getvalue())  # kind == "zero" leaves it empty


GOOD = {  # train/<class>/<image_id>: kind
    "00000/1.jpg": "jpeg", "00000/2.jpg": "rgba", "00000/3.jpg": "palette", "00001/4.jpg": "cmyk",
    "00001/5.jpg": "gray", "00001/6.jpg": "png",
}
BAD = {"00000/7.jpg": "truncated", "00001/8.jpg": "zero", "00001/9.jpg": "garbage", "00000/10.jpg": None}
REASONS = {"truncated": "truncated", "zero": "zero-byte file", "garbage": "cannot identify image", None: "missing file"}


@pytest.fixture()
def ali_root(tmp_path) -> Path:
    root = tmp_path / "ali"
    train = []
    for rel, kind in {**GOOD, **BAD}.items():
        class_id, image_id = rel.split("/")
        if kind is not None:  # None: listed in train.json but absent
            _image(root / "train" / rel, kind)
        train.append({"image_id": image_id, "class_id": class_id})
    _image(root / "val/00000/11.jpg")
    _image(root / "val/00002/12.jpg")  # a class seen only in val
    _image(root / "test/13.jpg")
    (root / "train.json").write_text(json.dumps({"images": train}))
    (root / "val.json").write_text(json.dumps({"images": [
        {"image_id": "11.jpg", "class_id": "00000"}, {"image_id": "12.jpg", "class_id": "00002"}]}))
    (root / "test.json").write_text(json.dumps({"images": [{"image_id": "13.jpg"}]}))
    return root


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_aliproducts_layout_and_quarantine(ali_root, tmp_path):
    manifest = prepare(ali_root, tmp_path / "m", workers=1)
    assert manifest.class_ids == ["00000", "00001", "00002"]
    assert manifest.root == ali_root.resolve()
    train = manifest.split("train")
    assert sorted(Path(p).relative_to(ali_root).as_posix() for p in train.paths) == sorted(f"train/{r}" for r in GOOD)
    assert {image_id: int(label) for image_id, label in zip(train.image_ids, train.labels)} == {
        "1.jpg": 0, "2.jpg": 0, "3.jpg": 0, "4.jpg": 1, "5.jpg": 1, "6.jpg": 1}
    assert manifest.split("val").labels.tolist() == [0, 2]
    test = manifest.split("test")
    assert test.labels.tolist() == [-1] and test.paths == [str(ali_root / "test/13.jpg")]

    quarantined = {row["path"]: row for row in read_quarantine(tmp_path / "m")}
    assert {p: q["reason"] for p, q in quarantined.items()} == {f"train/{r}": REASONS[k] for r, k in BAD.items()}
    assert all(q["split"] == "train" and q["class_id"] == q["path"].split("/")[1] for q in quarantined.values())
    assert not set(quarantined) & set(manifest.table["path"].to_pylist())

    formats = dict(zip(manifest.table["image_id"].to_pylist(), manifest.table["format"].to_pylist()))
    assert formats["2.jpg"] == formats["3.jpg"] == "PNG" and formats["4.jpg"] == "JPEG"
    for path in train.paths:  # every accepted mode loads as RGB
        assert load_rgb(path).mode == "RGB"

    summary = _summary(tmp_path / "m")
    assert summary["images"] == {"test": 1, "train": 6, "val": 2}
    assert summary["quarantined"]["total"] == 4
    assert summary["quarantined"]["by_reason"] == {"truncated": 1, "zero-byte file": 1, "cannot identify image": 1, "missing file": 1}
    assert summary["class_size"] == {"min": 0, "median": 3.0, "max": 3} and summary["classes_without_train_images"] == 1
    assert summary["formats"]["PNG/RGBA"] == 1 and summary["formats"]["PNG/P"] == 1 and summary["formats"]["JPEG/CMYK"] == 1
    assert summary["probe"] == {"probed": 12, "cached": 0, "missing": 1}
    assert (tmp_path / "m" / "class_sizes.png").read_bytes()[:4] == b"\x89PNG"


def test_parallel_probe_matches_serial(ali_root, tmp_path):
    serial = prepare(ali_root, tmp_path / "serial", workers=1)
    parallel = prepare(ali_root, tmp_path / "parallel", workers=2)
    assert parallel.table.equals(serial.table)
    assert read_quarantine(tmp_path / "parallel") == read_quarantine(tmp_path / "serial")


def test_probe_cache(ali_root, tmp_path):
    out = tmp_path / "m"
    first = prepare(ali_root, out, workers=1)
    again = prepare(ali_root, out, workers=1)
    assert _summary(out)["probe"] == {"probed": 0, "cached": 12, "missing": 1}
    assert again.table.equals(first.table)

    touched = ali_root / "train/00000/1.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    prepare(ali_root, out, workers=1)
    assert _summary(out)["probe"] == {"probed": 1, "cached": 11, "missing": 1}

    _image(ali_root / "train/00001/8.jpg")  # the zero-byte file is repaired: re-probed and accepted
    manifest = prepare(ali_root, out, workers=1)
    assert _summary(out)["probe"]["probed"] == 1
    assert "8.jpg" in manifest.split("train").image_ids
    assert "train/00001/8.jpg" not in {q["path"] for q in read_quarantine(out)}


def test_split_folder_tree(tmp_path):
    root = tmp_path / "tree"
    _image(root / "train/cat/a.JPG")
    _image(root / "train/cat/b.jpeg")
    _image(root / "train/dog/c.png", "png")
    _image(root / "val/dog/d.Jpg")
    (root / "train/cat/notes.txt").write_text("not an image")
    (root / "train/cat/.DS_Store").write_bytes(b"\0")
    (root / "train/stray.jpg").write_bytes(b"")  # not inside a class folder
    manifest = prepare(root, tmp_path / "m", workers=1)
    assert manifest.class_ids == ["cat", "dog"]
    assert manifest.split("train").image_ids == ["a.JPG", "b.jpeg", "c.png"]
    assert manifest.split("train").labels.tolist() == [0, 0, 1]
    assert manifest.split("val").image_ids == ["d.Jpg"] and manifest.split("val").labels.tolist() == [1]
    summary = _summary(tmp_path / "m")
    assert summary["layout"] == "split-folders" and summary["ignored_files"] == 2


def test_class_folder_tree_with_val_fraction(tmp_path):
    root = tmp_path / "flat"
    counts = {"a": 1, "b": 5, "c": 10, "d": 20}
    for class_id, n in counts.items():
        for i in range(n):
            _image(root / class_id / f"{i}.jpg", shade=10 * i)
    manifest = prepare(root, tmp_path / "m", workers=1, val_fraction=0.2, seed=0)
    assert _summary(tmp_path / "m")["layout"] == "class-folders"
    val = collections.Counter(manifest.split("val").labels.tolist())
    train = collections.Counter(manifest.split("train").labels.tolist())
    assert [val.get(i, 0) for i in range(4)] == [0, 1, 2, 4]  # round(0.2 n), at least one left in train
    assert [train[i] for i in range(4)] == [1, 4, 8, 16]
    assert not set(manifest.split("val").paths) & set(manifest.split("train").paths)

    same = prepare(root, tmp_path / "same", workers=1, val_fraction=0.2, seed=0)
    other = prepare(root, tmp_path / "other", workers=1, val_fraction=0.2, seed=1)
    assert same.split("val").paths == manifest.split("val").paths
    assert other.split("val").paths != manifest.split("val").paths


def test_val_fraction_refused_when_val_exists(ali_root, tmp_path):
    with pytest.raises(DatasetError, match="already has a val split"):
        prepare(ali_root, tmp_path / "m", workers=1, val_fraction=0.1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"imgs": []}', 'expected an object with an "images" list'),
        ('{"images": {"a": 1}}', 'expected an object with an "images" list'),
        ('{"images": [17]}', "entry 0 is not an object"),
        ('{"images": [{"image_id": "1.jpg", "class_id": "00000"}, {"class_id": "00000"}]}', "entry 1 has no valid image_id"),
        ('{"images": [{"image_id": "../1.jpg", "class_id": "00000"}]}', "entry 0 has no valid image_id"),
        ('{"images": [{"image_id": "1.jpg", "class_id": 3}]}', "entry 0 \\(1.jpg\\): class_id must be a non-empty string, got int 3"),
        ('{"images": [{"image_id": "1.jpg"}]}', "entry 0 \\(1.jpg\\): class_id must be a non-empty string, got nothing"),
        ('{"images": [{"image_id": "1.jpg", "class_id": "0"}, {"image_id": "1.jpg", "class_id": "0"}]}',
         "entry 1 repeats train/0/1.jpg \\(first listed at entry 0\\)"),
    ],
)
def test_wrong_json_names_file_and_problem(ali_root, tmp_path, content, message):
    (ali_root / "train.json").write_text(content)
    with pytest.raises(DatasetError, match=message) as err:
        prepare(ali_root, tmp_path / "m", workers=1)
    assert str(err.value).startswith(f"{ali_root / 'train.json'}: ")


def test_wrong_val_json_is_named(ali_root, tmp_path):
    (ali_root / "val.json").write_text("[]")
    with pytest.raises(DatasetError, match="val.json: expected"):
        prepare(ali_root, tmp_path / "m", workers=1)


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        prepare(tmp_path / "empty", tmp_path / "m")


def test_cycle_collector_state_restored(ali_root, tmp_path):
    """prepare pauses the cycle collector while it indexes; the caller gets it back as it was, after a
    run, after a DatasetError, and still off when the caller had turned it off."""
    import gc

    assert gc.isenabled()
    prepare(ali_root, tmp_path / "m", workers=1)
    assert gc.isenabled()
    with pytest.raises(DatasetError):
        prepare(tmp_path / "nope", tmp_path / "m")
    assert gc.isenabled()
    gc.disable()
    try:
        prepare(ali_root, tmp_path / "m", workers=1)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cli_synth_then_prepare(tmp_path, capsys):
    from fastprod.cli import main

    data, out = tmp_path / "synth", tmp_path / "prepared"
    assert main(["synth", str(data), "--classes", "4", "--train-images", "60", "--val-per-class", "2",
                 "--size", "32x32", "--corrupt", "2", "--workers", "2"]) == 0
    assert main(["prepare", str(data), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "60 training images" in printed and "quarantined 2: 1 truncated, 1 zero-byte file" in printed
    manifest = Manifest.load(out)
    assert len(manifest.split("train")) == 60 and len(manifest.split("val")) == 8 and manifest.num_classes == 4
    assert sorted(q["reason"] for q in read_quarantine(out)) == ["truncated", "zero-byte file"]

    (data / "train.json").write_text('{"images": [{"image_id": 5, "class_id": "00000"}]}')
    assert main(["prepare", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fastprod prepare: error: ") and "train.json: entry 0" in err


def test_extreme_aspect_and_pixel_count_quarantined(tmp_path, capsys):
    """A 1.6 KB PNG of 1 x 400,000 pixels costs gigabytes once resized for the model: quarantined with its
    reason; --max-aspect / --max-pixels change the limits, are recorded in summary.json, and a re-run with
    other limits re-probes instead of reusing results cached under the old ones."""
    from fastprod.cli import main

    root, out = tmp_path / "tree", tmp_path / "m"
    _image(root / "cat/a.jpg")  # 24 x 20 = 480 pixels
    (root / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(root / "dog/c.png")
    Image.new("RGB", (1, 400_000)).save(root / "dog/strip.png")
    assert main(["prepare", str(root), "--out", str(out), "--workers", "1"]) == 0
    assert {q["path"]: q["reason"] for q in read_quarantine(out)} == {
        "dog/strip.png": "extreme aspect ratio 1:400000 (max 20:1)"}
    summary = _summary(out)
    assert summary["max_aspect"] == 20.0 and summary["max_pixels"] == 64_000_000

    assert main(["prepare", str(root), "--out", str(out), "--workers", "1", "--max-aspect", "400000"]) == 0
    assert read_quarantine(out) == [] and _summary(out)["probe"]["cached"] == 0
    assert main(["prepare", str(root), "--out", str(out), "--workers", "1", "--max-pixels", "479"]) == 0
    assert {q["path"]: q["reason"] for q in read_quarantine(out)} == {
        "cat/a.jpg": "too many pixels: 24x20 = 480 (max 479)", "dog/strip.png": "too many pixels: 1x400000 = 400,000 (max 479)"}
    summary = _summary(out)
    assert summary["max_aspect"] == 20.0 and summary["max_pixels"] == 479 and summary["probe"]["cached"] == 0
    assert Manifest.load(out).split("train").image_ids == ["c.png"]
    capsys.readouterr()
    for flag, value in [("--max-aspect", "0.5"), ("--max-pixels", "0")]:
        assert main(["prepare", str(root), "--out", str(out), flag, value]) == 2
        assert capsys.readouterr().err.startswith(f"fastprod prepare: error: {flag} must be")


def _prepare_cli(root: Path, out: Path, *flags: str) -> tuple[int, str]:
    """`fastprod prepare` through the real CLI; returns the exit code and stderr."""
    import contextlib

    from fastprod.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["prepare", str(root), "--out", str(out), "--workers", "1", *flags])
    return code, err.getvalue()


def test_symlink_loops_and_broken_symlinks_are_quarantined(tmp_path):
    root, out = tmp_path / "tree", tmp_path / "m"
    _image(root / "train/cat/a.jpg")
    _image(root / "train/dog/b.jpg")
    os.symlink("loop.jpg", root / "train/cat/loop.jpg")  # points at itself
    os.symlink("loopdir", root / "train/loopdir")  # a class folder that points at itself
    os.symlink("gone.jpg", root / "train/dog/broken.jpg")
    os.symlink("../dog/b.jpg", root / "train/cat/alias.jpg")  # inside the root: accepted
    code, err = _prepare_cli(root, out)
    assert code == 0 and "Traceback" not in err
    assert {q["path"]: q["reason"] for q in read_quarantine(out)} == {
        "train/cat/loop.jpg": "symlink loop", "train/loopdir": "symlink loop", "train/dog/broken.jpg": "broken symlink"}
    assert Manifest.load(out).split("train").image_ids == ["a.jpg", "alias.jpg", "b.jpg"]


def test_symlinks_leaving_the_root_need_follow_symlinks(tmp_path):
    root, out, outside = tmp_path / "tree", tmp_path / "m", tmp_path / "elsewhere"
    _image(root / "train/cat/a.jpg")
    _image(outside / "x.jpg")
    _image(outside / "shelf/y.jpg")
    os.symlink(outside / "x.jpg", root / "train/cat/x.jpg")
    os.symlink(outside / "shelf", root / "train/shelf")  # a whole class folder elsewhere
    code, _ = _prepare_cli(root, out)
    reason = "symlink to a target outside the dataset root (--follow-symlinks accepts it)"
    assert code == 0 and {q["path"]: q["reason"] for q in read_quarantine(out)} == {
        "train/cat/x.jpg": reason, "train/shelf/y.jpg": reason}
    assert _summary(out)["follow_symlinks"] is False

    code, _ = _prepare_cli(root, out, "--follow-symlinks")
    manifest = Manifest.load(out)
    assert code == 0 and read_quarantine(out) == [] and _summary(out)["follow_symlinks"] is True
    assert manifest.split("train").image_ids == ["a.jpg", "x.jpg", "y.jpg"]
    assert all(load_rgb(p).size == (24, 20) for p in manifest.split("train").paths)

    linked = tmp_path / "linked"  # every image elsewhere (a root whose train/ is on another disk): the error says why
    linked.mkdir()
    os.symlink(root / "train", linked / "train")
    code, err = _prepare_cli(linked, tmp_path / "m2")
    assert code == 2 and f"all 3 images are unreadable (most often: {reason};" in err
    assert len(read_quarantine(tmp_path / "m2")) == 3  # the file the message points at exists


def test_file_names_that_are_not_utf8_are_quarantined_escaped(tmp_path):
    root, out = tmp_path / "tree", tmp_path / "m"
    _image(root / "cat/a.jpg")
    _image(root / "dog/b.jpg")
    raw_root = os.fsencode(root)
    jpeg = (root / "cat/a.jpg").read_bytes()
    (Path(os.fsdecode(raw_root + b"/cat/caf\xe9.jpg"))).write_bytes(jpeg)
    os.mkdir(raw_root + b"/\xff\\class")
    Path(os.fsdecode(raw_root + b"/\xff\\class/c.jpg")).write_bytes(jpeg)
    code, err = _prepare_cli(root, out)
    assert code == 0 and "Traceback" not in err
    reason = "name is not valid UTF-8 (path stored escaped)"
    rows = read_quarantine(out)
    assert {q["path"]: q["reason"] for q in rows} == {"cat/caf\\xe9.jpg": reason, "\\xff\\\\class/c.jpg": reason}
    assert {q["class_id"] for q in rows} == {"cat", "\\xff\\\\class"}
    manifest = Manifest.load(out)
    assert manifest.class_ids == ["cat", "dog"] and manifest.split("train").image_ids == ["a.jpg", "b.jpg"]
    code, _ = _prepare_cli(root, out)  # the probe cache was written: nothing is probed again
    assert code == 0 and _summary(out)["probe"] == {"probed": 0, "cached": 2, "missing": 0}


def test_image_ids_with_nul_or_lone_surrogates_are_quarantined(ali_root, tmp_path):
    doc = json.loads((ali_root / "train.json").read_text())
    doc["images"] += [{"image_id": "a\0.jpg", "class_id": "00000"}, {"image_id": "\ud800.jpg", "class_id": "00001"},
                      {"image_id": "14.jpg", "class_id": "c\0"}]
    (ali_root / "train.json").write_text(json.dumps(doc))  # json escapes them as \u0000 and \ud800
    code, err = _prepare_cli(ali_root, tmp_path / "m")
    assert code == 0 and "Traceback" not in err
    reasons = {q["path"]: q["reason"] for q in read_quarantine(tmp_path / "m")}
    assert reasons["train/00000/a\\x00.jpg"] == "name contains a NUL byte (path stored escaped)"
    assert reasons["train/00001/\\ud800.jpg"] == "name is not valid Unicode: lone surrogate (path stored escaped)"
    assert reasons["train/c\\x00/14.jpg"] == "name contains a NUL byte (path stored escaped)"
    assert Manifest.load(tmp_path / "m").class_ids == ["00000", "00001", "00002"]


def test_json_nested_too_deep_is_a_dataset_error(ali_root, tmp_path):
    (ali_root / "train.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match=r"train\.json: not valid JSON \(nested too deeply\)"):
        prepare(ali_root, tmp_path / "m", workers=1)
    code, err = _prepare_cli(ali_root, tmp_path / "m")
    assert code == 2 and err.startswith("fastprod prepare: error: ") and "train.json" in err and "Traceback" not in err


def test_class_sizes_plot_at_50030_classes_is_one_rank_size_line(tmp_path):
    """AliProducts' long tail (a few classes with thousands of images, many with 1-5, some empty): one
    sorted line on log axes, the empty classes counted in the title, a PNG of ordinary size."""
    rng = np.random.default_rng(0)
    sizes = np.minimum(rng.zipf(1.6, 50_030), 5_000)
    sizes[:7] = 0
    fig = plot_class_sizes(sizes, tmp_path / "sizes.png", "ali: 50030 classes")
    ranked = fig.axes[0]
    assert ranked.get_xscale() == ranked.get_yscale() == "log" and len(ranked.lines) == 1 and not ranked.patches
    x, y = ranked.lines[0].get_data()
    np.testing.assert_array_equal(y, np.sort(sizes[sizes > 0])[::-1])
    np.testing.assert_array_equal(x, np.arange(1, 50_030 - 7 + 1))
    assert "7 without training images" in fig._suptitle.get_text()
    png = (tmp_path / "sizes.png").read_bytes()
    assert png[:4] == b"\x89PNG" and 10_000 < len(png) < 400_000
    assert Image.open(tmp_path / "sizes.png").size == (1000, 400)


def test_class_sizes_plot_of_a_few_classes_marks_each_class(tmp_path):
    fig = plot_class_sizes(np.array([3, 1, 2]), tmp_path / "sizes.png", "three classes")
    ranked = fig.axes[0]
    assert 3 <= FEW_CLASSES and ranked.get_xscale() == "linear" and ranked.lines[0].get_marker() == "o"
    assert ranked.lines[0].get_ydata().tolist() == [3, 2, 1] and fig._suptitle.get_text() == "three classes"
