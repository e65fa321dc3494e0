"""The synthetic AliProducts generator: layout, long tail, label noise, special files, determinism."""

from __future__ import annotations

import argparse
import collections
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastprod.data import synth
from fastprod.data.images import ImageError, load_rgb, probe

ARGS = dict(classes=6, train_images=150, val_per_class=3, noise=0.2, size=(40, 32), corrupt=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return out, synth.synthesize(out, seed=3, workers=2, **ARGS)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _entries(root: Path, split: str) -> list[dict]:
    return json.loads((root / f"{split}.json").read_text())["images"]


def test_layout_and_json_format(dataset):
    root, summary = dataset
    train, val = _entries(root, "train"), _entries(root, "val")
    assert len(train) == ARGS["train_images"] + ARGS["corrupt"]
    assert len(val) == ARGS["classes"] * ARGS["val_per_class"]
    ids = [e["image_id"] for e in train + val]
    assert len(set(ids)) == len(ids)
    for split, entries in (("train", train), ("val", val)):
        for e in entries:
            assert set(e) == {"image_id", "class_id"}
            assert len(e["class_id"]) == 5 and e["class_id"].isdigit()
            assert e["image_id"].endswith(".jpg") and e["image_id"][:-4].isdigit()
            assert (root / split / e["class_id"] / e["image_id"]).is_file()
    assert {e["class_id"] for e in val} == {f"{c:05d}" for c in range(ARGS["classes"])}
    on_disk = {p for p in root.rglob("*") if p.is_file()}
    assert len(on_disk) == summary["files_written"] == len(ids) + 3


def test_long_tail(dataset):
    root, summary = dataset
    sizes = collections.Counter(e["class_id"] for e in _entries(root, "train"))
    corrupt_free = synth.long_tail_sizes(ARGS["classes"], ARGS["train_images"], np.random.default_rng(0))
    assert corrupt_free.sum() == ARGS["train_images"]
    assert min(sizes.values()) >= 5
    assert summary["class_size_min"] == 5
    assert summary["class_size_max"] >= 10 * summary["class_size_min"]
    bigger = synth.long_tail_sizes(50, 5000, np.random.default_rng(0))
    assert bigger.sum() == 5000 and bigger.min() == 5 and bigger.max() >= 100


def test_label_noise_and_sidecar(dataset):
    root, summary = dataset
    noise = json.loads((root / "noise.json").read_text())
    filed = {e["image_id"]: e["class_id"] for e in _entries(root, "train")}
    assert len(noise) == summary["noisy"] == round(ARGS["noise"] * ARGS["train_images"])
    for image_id, labels in noise.items():
        assert labels["given"] == filed[image_id] != labels["true"]
        assert (root / "train" / labels["given"] / image_id).is_file()
    val_ids = {e["image_id"] for e in _entries(root, "val")}
    assert not val_ids & set(noise)


def test_noisy_image_is_drawn_from_its_true_class(tmp_path):
    """A noisy file's pixels follow the true class's background hue, not the folder's."""
    out = tmp_path / "ds"
    synth.synthesize(out, classes=4, train_images=60, val_per_class=2, noise=0.3, seed=0, size=(32, 32), workers=1)
    styles = synth.class_styles(4, 0)
    for image_id, labels in json.loads((out / "noise.json").read_text()).items():
        if styles[int(labels["given"])][0] == styles[int(labels["true"])][0]:
            continue  # same background hue: not distinguishable by this check
        corner = np.asarray(load_rgb(out / "train" / labels["given"] / image_id), np.float64)[:4, :4].mean((0, 1))
        refs = {c: synth._hsv(styles[int(c)][0], 0.35, 0.9) for c in (labels["given"], labels["true"])}
        dist = {c: np.abs(corner - ref).sum() for c, ref in refs.items()}
        assert dist[labels["true"]] < dist[labels["given"]], image_id


def test_special_files(dataset):
    root, summary = dataset
    seen, reasons = collections.Counter(), collections.Counter()
    for e in _entries(root, "train"):
        path = root / "train" / e["class_id"] / e["image_id"]
        try:
            info = probe(path)
        except ImageError as err:
            reasons[str(err)] += 1
            continue
        seen[(info.format, info.mode)] += 1
        w, h = info.width, info.height
        assert 30 <= w <= 50 and 24 <= h <= 40
    assert seen[("PNG", "RGBA")] >= 1 and seen[("PNG", "P")] >= 1
    assert seen[("PNG", "RGBA")] + seen[("PNG", "P")] == summary["alpha_png"] >= 2
    assert seen[("JPEG", "L")] == 1 and seen[("JPEG", "CMYK")] == 1
    assert reasons == {"truncated": 2, "zero-byte file": 1}
    sizes = {probe(root / "val" / e["class_id"] / e["image_id"]).width for e in _entries(root, "val")}
    assert len(sizes) > 1  # sizes vary around --size


def test_deterministic_for_a_seed(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    synth.synthesize(again, seed=3, workers=1, **ARGS)  # another worker count, same bytes
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    synth.synthesize(other, seed=4, workers=2, **ARGS)
    assert _files(other) != _files(root)
    assert (other / "train.json").read_bytes() != (root / "train.json").read_bytes()


def test_classes_are_distinct_patterns():
    """Every class of the largest set has its own attribute tuple; the first 504 are the base styles, in the
    order synth always drew them (so the demo's and ladder's datasets are unchanged)."""
    styles = synth.class_styles(synth.MAX_CLASSES, 0)
    assert len(set(styles)) == len(styles) == 98_280
    assert styles[:504] == synth.class_styles(504, 0)
    assert all(s.grating is None and s.radius == (0.24, 0.36) and s.place == (0.0, 0.0, 0.15) for s in styles[:504])
    assert len({(s.hue, s.shape, s.foreground) for s in styles[:504]}) == 504
    assert styles[:50_030] == synth.class_styles(50_030, 0)
    assert synth.class_styles(50_030, 1) != synth.class_styles(50_030, 0)
    for bad in (1, synth.MAX_CLASSES + 1):
        with pytest.raises(ValueError, match="--classes"):
            synth.class_styles(bad, 0)


def test_refuses_non_empty_out_and_bad_args(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        synth.synthesize(tmp_path, classes=3, train_images=30, workers=1)
    with pytest.raises(ValueError, match="--train-images"):
        synth.synthesize(tmp_path / "n", classes=10, train_images=20, workers=1)


def test_register_parses_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.register(parser.add_subparsers())
    args = parser.parse_args([
        "synth", str(tmp_path / "cli"), "--classes", "3", "--train-images", "40", "--val-per-class", "1",
        "--size", "24x20", "--workers", "1", "--seed", "1",
    ])
    assert args.func(args) == 0
    assert "40 training images (geometric tail" in capsys.readouterr().out
    assert (tmp_path / "cli" / "val.json").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", str(tmp_path / "bad"), "--size", "big"])


def _law_reference(classes: int, total: int, tail: str) -> torch.Tensor:
    """The stated laws in float64 from closed forms, sorted head first: geometric, 5 * r^k (k = C-1 .. 0) with
    5 (r^C - 1) / (r - 1) = total; lognormal, max(1, s exp(1.3 z_r)) with z_r torch's normal quantile and s from
    the piecewise-linear sum (the k largest classes above the floor, the rest at 1)."""
    if tail == "geometric":
        lo, hi = 1.0 + 1e-12, 2.0  # 5 (2^C - 1) > total for every case below
        for _ in range(100):  # the sum's closed form, compared in logs: C log r <= log(total (r - 1) / 5 + 1)
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if classes * math.log(mid) <= math.log1p(total * (mid - 1) / 5) else (lo, mid)
        return 5 * lo ** torch.arange(classes - 1, -1, -1, dtype=torch.float64)
    p = 1 - (torch.arange(classes, dtype=torch.float64) + 0.5) / classes
    q = torch.exp(1.3 * torch.special.ndtri(p))  # descending
    k = torch.arange(1, classes + 1, dtype=torch.float64)  # the first k classes above the floor of 1
    s = (total - (classes - k)) / torch.cumsum(q, 0)
    fits = torch.cat([s[:-1] * q[1:] < 1, torch.tensor([True])])  # class k+1 would fall below the floor
    return torch.clamp(s[int(torch.nonzero(fits)[0])] * q, min=1.0)


@pytest.mark.parametrize("tail,classes,total", [
    ("geometric", 6, 150), ("geometric", 50, 5000), ("geometric", 504, 2600), ("geometric", 50_030, 1_000_000),
    ("lognormal", 7, 7), ("lognormal", 600, 1500), ("lognormal", 5003, 20_000), ("lognormal", 50_030, 1_000_000),
])
def test_class_sizes_follow_the_stated_law(tail, classes, total):
    """Sorted class sizes are the law's real values rounded down or up, never further, and sum to the total exactly."""
    sizes = synth.long_tail_sizes(classes, total, np.random.default_rng(0), tail)
    assert sizes.sum() == total and len(sizes) == classes
    ref = _law_reference(classes, total, tail).numpy()
    assert np.allclose(ref.sum(), total, rtol=1e-9)
    got = np.sort(sizes)[::-1]
    assert np.all(got >= np.floor(ref - 1e-6)) and np.all(got <= np.ceil(ref + 1e-6))
    assert got.min() >= (5 if tail == "geometric" else 1)


def test_lognormal_tail_has_the_aliproducts_shape():
    """At 50,030 classes and 1M images (the figures in synth's docstring): a few classes with thousands of images,
    the median class with about ten, over a third with 1-5; at AliProducts' 3M the median is in the tens."""
    million = np.sort(synth.long_tail_sizes(50_030, 1_000_000, np.random.default_rng(0), "lognormal"))[::-1]
    assert million[0] == 2195 and (million >= 1000).sum() == 6 and np.median(million) == 9
    assert round(100 * (million <= 5).mean()) == 37 and million.min() == 1
    three = np.sort(synth.long_tail_sizes(50_030, 3_000_000, np.random.default_rng(0), "lognormal"))[::-1]
    assert three[0] == 6592 and (three >= 1000).sum() == 122 and np.median(three) == 26
    assert round(100 * (three <= 5).mean()) == 12


def test_tail_default_and_errors(tmp_path):
    """The default law is geometric up to 504 classes (its minimum is 5 images a class) and lognormal beyond."""
    with pytest.raises(ValueError, match="--train-images must be at least 5 x classes = 2520"):
        synth.synthesize(tmp_path / "a", classes=504, train_images=504, workers=1)
    with pytest.raises(ValueError, match="--train-images must be at least the number of classes"):
        synth.synthesize(tmp_path / "b", classes=505, train_images=504, workers=1)
    with pytest.raises(ValueError, match="--tail"):
        synth.synthesize(tmp_path / "c", classes=3, train_images=30, tail="zipf", workers=1)


LARGE = dict(classes=600, train_images=800, val_per_class=0, noise=0.2, size=(16, 16), seed=2)


def test_beyond_504_classes_same_bytes_for_any_writer_count_and_noise_drawn_from_true_class(tmp_path):
    """The extended patterns and the lognormal tail: 1 and 2 writer processes write identical trees; each noisy
    file holds exactly the image of its true class (row r of the file order is seeded from (seed, r)), not of
    the folder's class."""
    one, two = tmp_path / "one", tmp_path / "two"
    summary = synth.synthesize(one, workers=1, **LARGE)
    synth.synthesize(two, workers=2, **LARGE)
    assert _files(one) == _files(two)
    assert summary["tail"] == "lognormal" and summary["class_size_min"] == 1

    train = _entries(one, "train")
    sizes = collections.Counter(e["class_id"] for e in train)
    assert sorted(sizes.values(), reverse=True) == sorted(
        synth.long_tail_sizes(600, 800, np.random.default_rng(0), "lognormal").tolist(), reverse=True)
    noise = json.loads((one / "noise.json").read_text())
    assert len(noise) == round(0.2 * 800)
    styles = synth.class_styles(600, LARGE["seed"])
    row = {e["image_id"]: r for r, e in enumerate(train)}  # train.json lists train files in file order
    checked = 0
    for image_id, labels in noise.items():
        path = one / "train" / labels["given"] / image_id
        if (probe(path).format, probe(path).mode) != ("JPEG", "RGB"):
            continue  # an alpha PNG or the grayscale or CMYK JPEG: encoded differently
        data = path.read_bytes()
        rendered = {c: synth.encode(synth.render(styles[int(c)], np.random.default_rng([LARGE["seed"], row[image_id]]),
                                                 LARGE["size"]), "jpeg") for c in (labels["true"], labels["given"])}
        assert data == rendered[labels["true"]] != rendered[labels["given"]], image_id
        checked += 1
    assert checked > 100


@pytest.mark.e2e
def test_5003_classes(tmp_path):
    """The CI-sized scale run: 5,003 classes, 10,000 tiny training images (20,000 took ~30 s on the loaded 2-core
    build machine, too long for a unit test): layout, exact class counts, the noise sidecar, distinct classes."""
    out = tmp_path / "ds"
    summary = synth.synthesize(out, classes=5003, train_images=10_000, val_per_class=0, size=(16, 16), workers=2)
    train = _entries(out, "train")
    assert len(train) == 10_000 and summary["files_written"] == 10_003
    sizes = collections.Counter(e["class_id"] for e in train)
    assert sorted(sizes.values(), reverse=True) == np.sort(
        synth.long_tail_sizes(5003, 10_000, np.random.default_rng(0), "lognormal"))[::-1].tolist()
    assert sum(1 for p in (out / "train").rglob("*.jpg")) == 10_000
    filed = {e["image_id"]: e["class_id"] for e in train}
    noise = json.loads((out / "noise.json").read_text())
    assert len(noise) == summary["noisy"] == 2000
    assert all(filed[i] == v["given"] != v["true"] and 0 <= int(v["true"]) < 5003 for i, v in noise.items())
    assert len(set(synth.class_styles(5003, 0))) == 5003
