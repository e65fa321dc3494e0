"""The DALI and FFCV backends against the PIL reference, on the CPU (no mocks: both libraries run here).

Per backend: shapes, dtype, normalisation and labels/indices attached to the right images (image i's
mean colour encodes i); eval views agree across backends within decoder/resampler tolerance;
augmentations off give the eval view, on change every image, and at probability p change exactly the
samples whose seeded parameters say so; a resumed loader yields the same remaining batches; corrupt
files are dropped and quarantined without ending the epoch. FFCV loaders compile for ~10 s each, so
they are built once per configuration and shared.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastprod.config import AugmentConfig, DataConfig
from fastprod.data.augment import MEAN, STD
from fastprod.data.ffcv_writer import write_beton
from fastprod.data import augmentations as ap
from fastprod.data.loaders import create_loader
from fastprod.data.manifest import Manifest
from fastprod.data.prepare import prepare
from fastprod.data.sampler import ClassSampler, epoch_batches

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# A backend whose library is missing skips its own cases only (the PIL reference always runs).
needs_dali = pytest.mark.skipif(not installed("nvidia.dali"), reason="NVIDIA DALI not installed")
needs_ffcv = pytest.mark.skipif(not installed("ffcv"), reason="FFCV not installed")
NEEDS = {"pil": [], "dali": [needs_dali], "ffcv": [needs_ffcv]}


def backends(*names: str) -> list:
    """`names` as parameters, each marked to skip when its library is missing."""
    return [pytest.param(name, marks=NEEDS[name], id=name) for name in names]

N, SIZE, SEED = 20, 32, 5
OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_p=0.0, hflip_p=0.0, perspective_p=0.0, cutout_p=0.0)
ALL_ON = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_p=1.0, hflip_p=1.0, perspective_p=1.0, cutout_p=1.0)
SOME = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_p=0.25, hflip_p=0.25, perspective_p=0.25, cutout_p=0.25)


def colour(i: int) -> tuple[int, int, int]:
    return (30 + 9 * i, 220 - 8 * i, 60 + 6 * i)


def _image(i: int) -> np.ndarray:
    """A horizontal ramp around colour(i), wider than high (the centre square keeps the mean)."""
    h, w = 40 + 4 * (i % 3), 56
    ramp = np.linspace(-20, 20, w)[None, :, None]
    return np.clip(np.array(colour(i))[None, None, :] + ramp, 0, 255).repeat(h, 0).astype(np.uint8)


def _dataset(root: Path, n: int) -> Manifest:
    entries = []
    for i in range(n):
        cls, name = f"{i % 3:05d}", f"{i:04d}.png" if i % 7 == 3 else f"{i:04d}.jpg"
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i)).save(root / "train" / cls / name, quality=95)
        entries.append({"image_id": name, "class_id": cls})
    (root / "train.json").write_text(json.dumps({"images": entries}))
    (root / "val.json").write_text(json.dumps({"images": []}))
    return prepare(root, root / "prepared", workers=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Manifest:
    """N images (PNG for i % 7 == 3, JPEG q95 otherwise) and a raw-pixel .beton of them."""
    manifest = _dataset(tmp_path_factory.mktemp("backends"), N)
    if installed("ffcv"):
        write_beton(manifest.split("train"), manifest.directory / "ffcv" / "train.beton", write_mode="raw", workers=1)
    return manifest


def config(manifest: Manifest, backend: str, **augment) -> DataConfig:
    return DataConfig(manifest=str(manifest.directory), backend=backend, image_size=SIZE, eval_resize=1.0,
                      batch_size=4, eval_batch_size=6, workers=1 if backend == "ffcv" else 2,  # ffcv: 1 thread
                      augment=AugmentConfig(**augment))  # compiles without numba's parallel pass, 3-5x sooner


_LOADERS: dict = {}


def loader(manifest: Manifest, backend: str, train: bool, aug: dict | None = None, **kw):
    """A shared loader per configuration (rewound, epoch 0); FFCV loaders are expensive to build."""
    key = (str(manifest.directory), backend, train, tuple(sorted((aug or {}).items())), tuple(sorted(kw.items())))
    if key not in _LOADERS:
        _LOADERS[key] = create_loader(manifest.split("train"), config(manifest, backend, **(aug or {})), train=train,
                                      seed=SEED, channels_last=False, **kw)
    result = _LOADERS[key]
    result.load_state_dict({"epoch": 0, "batches_done": 0})
    return result


def by_index(batches) -> dict[int, torch.Tensor]:
    return {int(i): img.clone() for b in batches for img, i in zip(b.images, b.indices)}


@pytest.mark.parametrize("backend", backends("pil", "dali", "ffcv"))
def test_eval_batches_are_normalised_and_attached(dataset, backend):
    split = dataset.split("train")
    batches = list(loader(dataset, backend, train=False))
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(N))
    for b in batches:
        assert b.images.dtype == torch.float32 and b.images.shape[1:] == (3, SIZE, SIZE) and b.dropped == 0
        assert b.labels.dtype == torch.int64
        for image, label, index in zip(b.images, b.labels, b.indices):
            i = int(Path(split.paths[index]).stem)
            assert label == split.labels[index] == dataset.class_ids.index(f"{i % 3:05d}")
            expected = (np.array(colour(i)) / 255.0 - np.array(MEAN)) / np.array(STD)
            np.testing.assert_allclose(image.double().mean(dim=(1, 2)).numpy(), expected, atol=0.05)


@needs_dali
@needs_ffcv
def test_eval_views_agree_across_backends(dataset):
    views = {name: by_index(loader(dataset, name, train=False)) for name in ("pil", "dali", "ffcv")}
    for name in ("dali", "ffcv"):
        diff = torch.stack([(views[name][i] - views["pil"][i]).abs() for i in range(N)])
        assert diff.mean() < 0.03 and diff.max() < 0.3, (name, diff.mean(), diff.max())  # ~1 and ~17 grey levels


@pytest.mark.parametrize("backend", backends("dali", "ffcv"))
def test_augmentations_off_give_the_eval_view_and_on_change_every_image(dataset, backend):
    reference = by_index(loader(dataset, backend, train=False))
    plain = by_index(loader(dataset, backend, train=True, aug=OFF))
    assert len(plain) == N // 4 * 4
    for i, img in plain.items():
        torch.testing.assert_close(img, reference[i], atol=1e-5, rtol=0)
    if backend == "ffcv":  # one compile less: the seeded-probability test covers changed and unchanged samples
        return
    for i, img in by_index(loader(dataset, backend, train=True, aug=ALL_ON)).items():
        assert not torch.allclose(img, reference[i], atol=1e-3), i


@needs_dali
def test_each_dali_augmentation_alone(dataset):
    reference = by_index(loader(dataset, "dali", train=False))
    for name in ("hflip_p", "rotation_p", "perspective_p", "cutout_p"):
        for i, img in by_index(loader(dataset, "dali", train=True, aug={**OFF, name: 1.0})).items():
            assert not torch.allclose(img, reference[i], atol=1e-3), (name, i)
            if name == "hflip_p":
                torch.testing.assert_close(img, reference[i].flip(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", backends("dali", "ffcv"))
def test_augmentations_apply_to_the_samples_their_seeded_probability_picks(dataset, backend):
    reference = by_index(loader(dataset, backend, train=False))
    got = by_index(loader(dataset, backend, train=True, aug=SOME))
    changed, expected = set(), set()
    for i, img in got.items():
        if not torch.allclose(img, reference[i], atol=1e-3):
            changed.add(i)
        u = ap.uniforms(SEED, 0, i)
        if ap.flips(u, 0.25) or ap.warp_matrix(u, SIZE, 0.25, 15.0, 0.25, 0.3)[1] or ap.cutout_box(u, SIZE, 0.25, 0.02, 0.2)[2]:
            expected.add(i)
    assert changed == expected and 0 < len(changed) < len(got)


@pytest.mark.parametrize("backend", backends("dali", "ffcv"))
def test_resume_mid_epoch_gives_the_same_remaining_batches(dataset, backend):
    first = loader(dataset, backend, train=True, aug=SOME)
    first.set_epoch(2)
    full = [(b.images.clone(), b.indices.clone(), b.labels.clone()) for b in first]
    assert len(full) == N // 4
    first.load_state_dict({"epoch": 2, "batches_done": 0})
    it = iter(first)
    next(it), next(it)
    it.close()  # stopped after two batches
    state = first.state_dict()
    assert state == {"epoch": 2, "batches_done": 2, "failures": 0, "failures_total": 0}
    # DALI: a new loader; FFCV: the same one (a new one would recompile), restored from the state
    resumed = create_loader(dataset.split("train"), config(dataset, "dali", **SOME), train=True, seed=SEED,
                            channels_last=False) if backend == "dali" else first
    resumed.load_state_dict(state)
    rest = [(b.images, b.indices, b.labels) for b in resumed]
    assert len(rest) == len(full) - 2
    for (a, ia, la), (b, ib, lb) in zip(full[2:], rest):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(a, b)
    resumed.set_epoch(3)
    assert torch.cat([b.indices for b in resumed]).tolist() != torch.cat([i for _, i, _ in full]).tolist()


@pytest.mark.parametrize("backend", backends("pil", "dali", "ffcv"))
def test_a_class_aware_draw_is_loaded_as_drawn_and_resumes_exactly(dataset, backend):
    """repeat_factor at t = 0.9 repeats every class (r ~ 1.6): images recur within an epoch and a batch."""
    split = dataset.split("train")
    cfg = dataclasses.replace(config(dataset, backend, **OFF), sampler="repeat_factor", repeat_threshold=0.9)
    drawn = create_loader(split, cfg, train=True, seed=SEED, channels_last=False)
    drawn.set_epoch(1)
    full = [(b.images.clone(), b.indices.clone(), b.labels.clone()) for b in drawn]
    expected = epoch_batches(N, 4, epoch=1, seed=SEED, rank=0, world=1, shuffle=True, drop_last=True,
                             sampler=ClassSampler(split.labels, "repeat_factor", 0.9))
    assert [i.tolist() for _, i, _ in full] == [[i for i, _ in b] for b in expected] and len(full) > N // 4
    assert len(set(torch.cat([i for _, i, _ in full]).tolist())) < len(full) * 4  # some images recur
    views = by_index(loader(dataset, backend, train=False))
    for images, indices, labels in full:  # augmentations off: every copy is its image's eval view
        assert torch.equal(labels, torch.as_tensor(split.labels[indices.numpy()]))
        for image, i in zip(images, indices.tolist()):
            assert (image - views[i]).abs().mean() < 0.03
    drawn.load_state_dict({"epoch": 1, "batches_done": 0})
    it = iter(drawn)
    next(it), next(it)
    it.close()
    state = drawn.state_dict()
    resumed = drawn if backend == "ffcv" else create_loader(split, cfg, train=True, seed=SEED, channels_last=False)
    resumed.load_state_dict(state)
    rest = [(b.images, b.indices, b.labels) for b in resumed]
    assert len(rest) == len(full) - 2
    for (a, ia, la), (b, ib, lb) in zip(full[2:], rest):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(a, b)
    resumed.close()


@needs_dali
def test_dali_ranks_get_disjoint_shards(dataset):
    cfg = config(dataset, "dali")
    shards = [torch.cat([b.indices for b in create_loader(dataset.split("train"), cfg, train=True, rank=r, world=2)])
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) and not set(shards[0].tolist()) & set(shards[1].tolist())


@needs_dali
def test_dali_corrupt_files_do_not_kill_the_epoch(dataset, tmp_path):
    split = dataset.split("train")
    garbage, truncated = Path(split.paths[5]), Path(split.paths[8])  # both JPEGs
    saved = {p: p.read_bytes() for p in (garbage, truncated)}
    log = tmp_path / "quarantine.jsonl"
    try:
        garbage.write_bytes(b"\xff\xd8\xff" + bytes(100))  # fails in Python (PIL)
        truncated.write_bytes(saved[truncated][: len(saved[truncated]) // 3])  # header fine, DALI's decoder fails
        with pytest.warns(UserWarning, match="quarantined"):
            batches = list(create_loader(split, config(dataset, "dali"), train=False, quarantine_log=log))
        assert sum(b.dropped for b in batches) == 2
        seen = torch.cat([b.indices for b in batches]).tolist()
        assert seen == [i for i in range(N) if i not in (5, 8)]
        assert {json.loads(line)["index"] for line in log.read_text().splitlines()} == {5, 8}
        # a new run with the same log skips both up front, without decoding or warning again
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = list(create_loader(split, config(dataset, "dali"), train=False, quarantine_log=log))
        assert sum(b.dropped for b in again) == 2 and sum(len(b.indices) for b in again) == N - 2
    finally:
        for p, data in saved.items():
            p.write_bytes(data)


@needs_ffcv
def test_ffcv_unreadable_image_is_dropped_and_quarantined(tmp_path):
    manifest = _dataset(tmp_path / "raw", 8)
    split = manifest.split("train")
    Path(split.paths[2]).write_bytes(b"\xff\xd8\xff" + bytes(50))
    write_beton(split, manifest.directory / "ffcv" / "train.beton", workers=1)
    log = tmp_path / "quarantine.jsonl"
    with pytest.warns(UserWarning, match="quarantined"):
        batches = list(create_loader(split, config(manifest, "ffcv"), train=False, quarantine_log=log))
    assert sum(b.dropped for b in batches) == 1
    assert torch.cat([b.indices for b in batches]).tolist() == [0, 1, 3, 4, 5, 6, 7]
    assert json.loads(log.read_text())["index"] == 2


@needs_ffcv
def test_ffcv_refuses_a_beton_of_other_rows(dataset, tmp_path):
    from fastprod.data.manifest import DatasetError

    other = tmp_path / "ffcv"
    other.mkdir()
    shutil.copy(dataset.directory / "ffcv" / "train.beton", other / "train.beton")
    meta = json.loads((dataset.directory / "ffcv" / "train.beton.json").read_text())
    (other / "train.beton.json").write_text(json.dumps({**meta, "paths_sha1": "0" * 40}))
    cfg = DataConfig(**{**config(dataset, "ffcv").__dict__, "ffcv_dir": str(other)})
    with pytest.raises(DatasetError, match="write-ffcv"):
        create_loader(dataset.split("train"), cfg, train=False)


@needs_ffcv
def test_write_ffcv_shows_a_bar_per_split(dataset, tmp_path, capsys):
    """As a user runs it: a bar labelled with the split's name over its images on stderr; none with --no-progress."""
    import ffcv.writer
    import tqdm

    from fastprod.cli import main

    args = ["write-ffcv", str(dataset.directory), "--out", str(tmp_path), "--splits", "train", "--workers", "1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "train: 100%" in err and f"{N}/{N}" in err and "img/s" in err, err
    assert main([*args, "--no-progress"]) == 0 and capsys.readouterr().err == ""
    assert ffcv.writer.tqdm is tqdm.tqdm  # FFCV's own bar is put back

@needs_ffcv
def test_ffcv_fused_geometry_matches_the_op_by_op_pipeline(dataset, monkeypatch):
    from fastprod.data.loaders.ffcv import FFCVLoader

    fused = by_index(loader(dataset, "ffcv", train=True, aug=SOME))
    monkeypatch.setattr(FFCVLoader, "FUSE_GEOMETRY", False)
    split = dataset.split("train")
    separate = by_index(create_loader(split, config(dataset, "ffcv", **SOME), train=True, seed=SEED, channels_last=False))
    for i, img in fused.items():
        u = ap.uniforms(SEED, 0, i)
        if not ap.warp_matrix(u, SIZE, 0.25, 15.0, 0.25, 0.3)[1]:  # no warp: the very same operations
            torch.testing.assert_close(img, separate[i], atol=1e-5, rtol=0)
        else:  # one resampling instead of two: close, not equal
            assert (img - separate[i]).abs().mean() < 0.08, i


@needs_ffcv
def test_ffcv_operations_run_outside_a_loader():
    """The module-level FFCV operations on a batch, without FFCV's pipeline: each image is flipped or cut
    out exactly where its seeded parameters (seed, epoch, index) say."""
    from fastprod.data.augment import MEAN_UINT8
    from fastprod.data.augmentations import cutout, flip
    from fastprod.data.loaders import ffcv_ops

    box, epoch = np.array([SEED, 3], dtype=np.int64), 3
    images = np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    for stage in (flip, cutout):
        run = ffcv_ops.SeededOperation(stage, box, SIZE, AugmentConfig(**SOME)).generate_code()
        out = run(images, np.empty_like(images), np.arange(N))
        for i in range(N):
            u, expected = ap.uniforms(SEED, epoch, i), images[i].copy()
            if stage is flip and ap.flips(u, 0.25):
                expected = expected[:, ::-1]
            if stage is cutout:
                top, left, h, w = ap.cutout_box(u, SIZE, 0.25, 0.02, 0.2)
                expected[top : top + h, left : left + w] = MEAN_UINT8
            np.testing.assert_array_equal(out[i], expected)
