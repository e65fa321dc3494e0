"""`data.sampler`: each class-aware draw against its formula (float64 expectations; the draws are
stratified, so every epoch's class counts are exact up to rounding), uniform identical to the seed's
sampler, the order a pure function of (seed, epoch, rank, world): rank shards partition the draw,
PIL batches do not depend on the worker count, a restored loader continues the epoch exactly;
evaluation stays in order; bad settings are one-line config errors naming the key."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from fastprod.config import ConfigError, DataConfig, load_config
from fastprod.data.loaders import create_loader
from fastprod.data.manifest import Manifest, SplitView
from fastprod.data.prepare import prepare
from fastprod.data.sampler import ClassSampler, epoch_batches

# a long tail: class c has SIZES[c] training images (class 5 has none)
SIZES = [200, 60, 25, 9, 3, 0, 1]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(len(SIZES)), SIZES))
THRESHOLD = 0.05  # repeats classes 2-6 (under 5% of the images)


def seed_epoch_batches(n, batch_size, *, epoch, seed, rank, world, shuffle, drop_last):
    """The seed's sampler before class-aware sampling, verbatim: the reference `uniform` must reproduce."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if drop_last or shuffle:
        order += order[: (-len(order)) % world]
    shard = order[rank::world]
    stop = len(shard) - len(shard) % batch_size if drop_last else len(shard)
    return [[(i, epoch) for i in shard[s : s + batch_size]] for s in range(0, stop, batch_size)]


def expected_per_class(kind: str) -> tuple[np.ndarray, int]:
    """Each class's samples per epoch and the epoch length, from the formulas in float64."""
    n = np.array(SIZES, dtype=np.float64)
    if kind == "sqrt":
        return len(LABELS) * np.sqrt(n) / np.sqrt(n).sum(), len(LABELS)
    if kind == "balanced":
        return len(LABELS) * (n > 0) / (n > 0).sum(), len(LABELS)
    fraction = n / n.sum()
    repeats = np.array([max(1.0, (THRESHOLD / f) ** 0.5) if f > 0 else 0.0 for f in fraction])
    length = round(float((n * repeats).sum()))
    return n * repeats * length / (n * repeats).sum(), length  # LVIS's expected length, rounded


@pytest.mark.parametrize("shuffle, drop_last, world", [(True, True, 1), (True, True, 3), (False, False, 3),
                                                       (False, True, 2), (True, False, 4)])
def test_uniform_is_the_seed_sampler(shuffle, drop_last, world):
    for epoch, seed, rank in [(0, 0, 0), (3, 7, world - 1), (11, 2, world // 2)]:
        kw = dict(epoch=epoch, seed=seed, rank=rank, world=world, shuffle=shuffle, drop_last=drop_last)
        assert epoch_batches(103, 8, **kw) == seed_epoch_batches(103, 8, **kw)


@pytest.mark.parametrize("kind", ["sqrt", "balanced", "repeat_factor"])
def test_class_counts_follow_the_formula(kind):
    expected, length = expected_per_class(kind)
    sampler = ClassSampler(LABELS, kind, THRESHOLD)
    assert sampler.length == length
    epochs = 400
    counts = np.zeros((epochs, len(SIZES)))
    for epoch in range(epochs):
        order = sampler.draw(epoch, seed=3)
        assert len(order) == length
        counts[epoch] = np.bincount(LABELS[order], minlength=len(SIZES))
        per_image = np.bincount(order, minlength=len(LABELS))
        for c, size in enumerate(SIZES):  # stratified: floor or ceil of the expectation, per class and per image
            assert np.floor(expected[c] - 1e-9) <= counts[epoch, c] <= np.ceil(expected[c] + 1e-9)
            if size:
                share = expected[c] / size
                mine = per_image[LABELS == c]
                assert np.floor(share - 1e-9) <= mine.min() and mine.max() <= np.ceil(share + 1e-9)
    assert counts[:, 5].sum() == 0  # a class without training images is never drawn
    # on average exactly the expectation: each epoch's count is floor(E) + Bernoulli(frac(E)), so the mean over
    # the epochs is within 4 standard errors of E (two-sided, p ~ 6e-5 per class; fixed seed, deterministic)
    frac = expected - np.floor(expected)
    assert np.all(np.abs(counts.mean(0) - expected) <= 4 * np.sqrt(frac * (1 - frac) / epochs) + 1e-9)


def test_repeat_factor_repeats_each_image_lvis_style():
    order = ClassSampler(LABELS, "repeat_factor", THRESHOLD).draw(5, seed=0)
    per_image = np.bincount(order, minlength=len(LABELS))
    for c, size in enumerate(SIZES):
        if size:
            r = max(1.0, (THRESHOLD / (size / len(LABELS))) ** 0.5)
            assert set(per_image[LABELS == c]) <= {np.floor(r), np.ceil(r)}
    assert set(per_image[LABELS == 0]) == {1}  # a head class is drawn exactly once, as in uniform


@pytest.mark.parametrize("kind", ["uniform", "sqrt", "balanced", "repeat_factor"])
def test_ranks_partition_the_epoch_draw(kind):
    sampler = None if kind == "uniform" else ClassSampler(LABELS, kind, THRESHOLD)
    world, batch = 3, 8
    shards = [epoch_batches(len(LABELS), batch, epoch=4, seed=9, rank=r, world=world, shuffle=True, drop_last=True,
                            sampler=sampler) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) > 0  # the same number of batches per rank
    drawn = [[i for b in s for i, e in b if e == 4] for s in shards]
    assert len({len(d) for d in drawn}) == 1 and all(len(b) == batch for s in shards for b in s)
    if sampler is None:  # without replacement: disjoint images
        assert not (set(drawn[0]) & set(drawn[1]) or set(drawn[1]) & set(drawn[2]) or set(drawn[0]) & set(drawn[2]))
        return
    # with replacement: the ranks' samples, interleaved, are the start of the one epoch draw every rank made
    order = sampler.draw(4, seed=9)
    interleaved = [d[k] for k in range(len(drawn[0])) for d in drawn]
    assert interleaved == order[: len(interleaved)].tolist()
    assert Counter(i for d in drawn for i in d) <= Counter(order.tolist())
    assert sampler.draw(4, seed=9).tolist() == order.tolist() != sampler.draw(5, seed=9).tolist()


def test_unlabelled_training_images_are_a_config_error():
    with pytest.raises(ConfigError, match=r"^data\.sampler: sqrt needs a label on every training image \(1 of 4"):
        ClassSampler(np.array([0, 1, -1, 1]), "sqrt", 0.001)


@pytest.mark.parametrize("override, key", [("data.sampler=square_root", "data.sampler"),
                                           ("data.repeat_threshold=0", "data.repeat_threshold"),
                                           ("data.repeat_threshold=1.5", "data.repeat_threshold")])
def test_bad_settings_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(None, ["data.manifest=somewhere", override])


def test_defaults():
    data = load_config(None, ["data.manifest=somewhere"]).data
    assert (data.sampler, data.repeat_threshold) == ("uniform", 0.001)


SIZE = 16
TINY = [9, 4, 2, 1]  # images per class of the loader dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Manifest:
    """16 small PNGs in 4 long-tailed classes; image i's colour encodes i."""
    root = tmp_path_factory.mktemp("sampler")
    entries = []
    for i, c in enumerate(np.repeat(np.arange(len(TINY)), TINY)):
        cls = f"{c:05d}"
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        pixels = np.full((SIZE, SIZE + 4, 3), (10 + 15 * i, 200 - 9 * i, 30 + 7 * i), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / cls / f"{i:04d}.png")
        entries.append({"image_id": f"{i:04d}.png", "class_id": cls})
    (root / "train.json").write_text(json.dumps({"images": entries}))
    (root / "val.json").write_text(json.dumps({"images": []}))
    return prepare(root, root / "prepared", workers=1)


def config(sampler: str, workers: int = 0) -> DataConfig:
    return DataConfig(manifest="unused", image_size=SIZE, batch_size=3, eval_batch_size=5, workers=workers,
                      sampler=sampler, repeat_threshold=0.2)


def collect(loader) -> list:
    return [(b.images.clone(), b.labels.clone(), b.indices.clone()) for b in loader]


@pytest.mark.parametrize("kind", ["balanced", "repeat_factor"])
def test_pil_batches_are_the_draw_worker_independent_and_resume_exactly(dataset, kind):
    split = dataset.split("train")
    loader = create_loader(split, config(kind), train=True, seed=5, channels_last=False)
    loader.set_epoch(2)
    full = collect(loader)
    expected = epoch_batches(len(split), 3, epoch=2, seed=5, rank=0, world=1, shuffle=True, drop_last=True,
                             sampler=ClassSampler(split.labels, kind, 0.2))
    assert [b[2].tolist() for b in full] == [[i for i, _ in batch] for batch in expected] and len(full) == len(loader)
    assert all(torch.equal(labels, torch.as_tensor(split.labels[indices.numpy()])) for _, labels, indices in full)
    parallel = create_loader(split, config(kind, workers=2), train=True, seed=5, channels_last=False)
    parallel.set_epoch(2)
    for (a, la, ia), (b, lb, ib) in zip(full, collect(parallel), strict=True):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(a, b)
    parallel.close()
    first = create_loader(split, config(kind), train=True, seed=5, channels_last=False)
    first.set_epoch(2)
    it = iter(first)
    next(it), next(it)
    resumed = create_loader(split, config(kind), train=True, seed=5, channels_last=False)
    resumed.load_state_dict(first.state_dict())
    for (a, la, ia), (b, lb, ib) in zip(full[2:], collect(resumed), strict=True):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(a, b)


def test_evaluation_stays_uniform_in_order(dataset):
    split = dataset.split("train")
    indices = [b.indices for b in create_loader(split, config("balanced"), train=False, channels_last=False)]
    assert torch.cat(indices).tolist() == list(range(len(split)))


def test_a_training_split_without_labels_is_refused_by_a_class_aware_loader():
    split = SplitView("test", ["a.png", "b.png"], np.array([-1, -1]), ["a", "b"])
    with pytest.raises(ConfigError, match=r"^data\.sampler: balanced needs a label"):
        create_loader(split, config("balanced"), train=True)
