"""The PIL baseline loader: normalisation, labels/indices attached to the right images, sharding,
worker-independent and resumable batch order, augmentation switches, and load-time quarantine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastprod.config import AugmentConfig, DataConfig
from fastprod.data.augment import MEAN, STD
from fastprod.data.loaders import create_loader
from fastprod.data.manifest import Manifest
from fastprod.data.prepare import prepare

N, SIZE = 24, 32


def colour(i: int) -> tuple[int, int, int]:
    return (20 + 9 * i, 235 - 7 * i, 40 + 5 * i)  # ramp +-20 stays inside [0, 255]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Manifest:
    """N lossless PNGs: image i is a horizontal ramp whose mean colour encodes i; class = i % 3."""
    root = tmp_path_factory.mktemp("loader")
    entries = []
    ramp = np.linspace(-20, 20, SIZE)[None, :, None]
    for i in range(N):
        cls = f"{i % 3:05d}"
        pixels = np.clip(np.array(colour(i))[None, None, :] + ramp, 0, 255).repeat(SIZE, 0).astype(np.uint8)
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "train" / cls / f"{i:04d}.png")
        entries.append({"image_id": f"{i:04d}.png", "class_id": cls})
    (root / "train.json").write_text(json.dumps({"images": entries}))
    (root / "val.json").write_text(json.dumps({"images": []}))
    return prepare(root, root / "prepared", workers=1)


def config(**augment) -> DataConfig:
    return DataConfig(manifest="unused", image_size=SIZE, eval_resize=1.0, batch_size=4, eval_batch_size=5,
                      workers=0, augment=AugmentConfig(**augment))


OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_p=0.0, hflip_p=0.0, perspective_p=0.0,
           cutout_p=0.0)


def collect(loader) -> list:
    return [(b.images.clone(), b.labels.clone(), b.indices.clone()) for b in loader]


def test_eval_batches_are_normalised_and_attached(dataset):
    split = dataset.split("train")
    batches = collect(create_loader(split, config(), train=False, channels_last=False))
    seen = torch.cat([idx for _, _, idx in batches]).tolist()
    assert seen == list(range(len(split)))  # eval order is the split order, nothing dropped or repeated
    for images, labels, indices in batches:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, SIZE, SIZE)
        for image, label, index in zip(images, labels, indices):
            i = int(Path(split.paths[index]).stem)
            assert label == split.labels[index] and split.labels[index] == dataset.class_ids.index(f"{i % 3:05d}")
            # the ramp is symmetric around the colour, so the mean pixel is the colour itself
            expected = (np.array(colour(i)) / 255.0 - np.array(MEAN)) / np.array(STD)
            np.testing.assert_allclose(image.double().mean(dim=(1, 2)).numpy(), expected, atol=0.02)


def test_train_order_is_worker_independent_and_resumable(dataset):
    split = dataset.split("train")
    cfg = config()
    loader = create_loader(split, cfg, train=True, seed=5, channels_last=False)
    loader.set_epoch(2)
    full = collect(loader)
    assert len(full) == N // cfg.batch_size
    with_workers = create_loader(split, DataConfig(**{**cfg.__dict__, "workers": 2}), train=True, seed=5,
                                 channels_last=False)
    with_workers.set_epoch(2)
    parallel = collect(with_workers)
    assert len(parallel) == len(full) > 0  # zip below would pass on an empty list
    for (a, la, ia), (b, lb, ib) in zip(full, parallel):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(a, b)
    # stop after two batches, restore the state into a new loader, continue
    first = create_loader(split, cfg, train=True, seed=5, channels_last=False)
    first.set_epoch(2)
    it = iter(first)
    next(it), next(it)
    resumed = create_loader(split, cfg, train=True, seed=5, channels_last=False)
    resumed.load_state_dict(first.state_dict())
    rest = collect(resumed)
    assert len(rest) == len(full) - 2
    for (a, _, ia), (b, _, ib) in zip(full[2:], rest):
        assert torch.equal(ia, ib) and torch.equal(a, b)
    # another epoch is another order
    loader.set_epoch(3)
    assert not torch.equal(torch.cat([i for _, _, i in collect(loader)]), torch.cat([i for _, _, i in full]))


def test_ranks_get_disjoint_shards(dataset):
    split = dataset.split("train")
    for train in (True, False):
        shards = [torch.cat([b.indices for b in create_loader(split, config(), train=train, rank=r, world=2)])
                  for r in range(2)]
        assert not set(shards[0].tolist()) & set(shards[1].tolist())
        assert len(shards[0]) == len(shards[1]) if train else len(set(torch.cat(shards).tolist())) == N


def test_augmentations_switch_on_and_off(dataset):
    split = dataset.split("train")
    reference = collect(create_loader(split, config(), train=False, channels_last=False))
    plain = collect(create_loader(split, config(**OFF), train=True, channels_last=False))
    by_index = {int(i): img for imgs, _, idx in reference for img, i in zip(imgs, idx)}
    for imgs, _, idx in plain:  # every augmentation at probability 0: train view == eval view
        for img, i in zip(imgs, idx):
            torch.testing.assert_close(img, by_index[int(i)])
    for name, on in [("hflip_p", 1.0), ("rotation_p", 1.0), ("perspective_p", 1.0), ("cutout_p", 1.0)]:
        augmented = collect(create_loader(split, config(**{**OFF, name: on}), train=True, channels_last=False))
        changed = [not torch.allclose(img, by_index[int(i)], atol=1e-3)
                   for imgs, _, idx in augmented for img, i in zip(imgs, idx)]
        assert all(changed), name
    flipped = collect(create_loader(split, config(**{**OFF, "hflip_p": 1.0}), train=True, channels_last=False))
    for imgs, _, idx in flipped:
        for img, i in zip(imgs, idx):
            torch.testing.assert_close(img, by_index[int(i)].flip(-1))


def test_uniform_slots_follow_the_registered_declarations():
    """Each augmentation's uniforms come right after those registered before it, none shared, none unused."""
    from fastprod.data import augmentations

    at = 0
    for module in augmentations.AUGMENTATIONS:
        assert module.FIRST == at, module.__name__
        at += sum(module.UNIFORMS.values())
    assert augmentations.N_UNIFORMS == at == len(augmentations.uniforms(0, 0, 0))


def test_unreadable_image_is_quarantined_and_the_epoch_goes_on(dataset, tmp_path):
    split = dataset.split("train")
    victim = Path(split.paths[7])
    saved = victim.read_bytes()
    try:
        victim.write_bytes(saved[: len(saved) // 3])
        log = tmp_path / "quarantine.jsonl"
        with pytest.warns(UserWarning, match="quarantined"):
            batches = list(create_loader(split, config(), train=False, quarantine_log=log))
        assert sum(b.dropped for b in batches) == 1
        assert 7 not in torch.cat([b.indices for b in batches]).tolist()
        assert sum(len(b.indices) for b in batches) == N - 1
        record = json.loads(log.read_text())
        assert record["path"] == str(victim) and record["index"] == 7
    finally:
        victim.write_bytes(saved)


def test_an_unknown_backend_is_a_config_error(dataset):
    from fastprod.config import ConfigError

    with pytest.raises(ConfigError, match="data.backend: 'nvjpeg' is not one of"):
        create_loader(dataset.split("train"), DataConfig(**{**config().__dict__, "backend": "nvjpeg"}), train=True)


def test_normalize_matches_float64():
    """(x / 255 - mean) / std against float64, for NCHW and channels_last inputs and outputs."""
    from fastprod.data.augment import Normalize

    pixels = torch.randint(0, 256, (3, 3, 7, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels[0, :, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    expected = (pixels.double() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    for channels_last in (True, False):
        normalize = Normalize(torch.device("cpu"), channels_last)
        for images in (pixels, pixels.contiguous(memory_format=torch.channels_last)):
            out = normalize(images)
            assert out.dtype == torch.float32
            assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)


def pil_workers() -> set:
    import multiprocessing

    return set(multiprocessing.active_children())


def test_workers_persist_across_passes_until_closed(dataset):
    """One set of worker processes serves every epoch and evaluation pass of a loader; close() ends them."""
    before = pil_workers()
    loader = create_loader(dataset.split("train"), DataConfig(**{**config().__dict__, "workers": 2}), train=True)
    assert pil_workers() == before  # made lazily, on the first pass
    collect(loader)
    workers = pil_workers() - before
    assert len(workers) == 2
    loader.set_epoch(1)
    collect(loader)
    loader.rewind()
    collect(loader)
    assert pil_workers() - before == workers
    loader.close()
    assert not any(w.is_alive() for w in workers) and pil_workers() == before
    loader.rewind()
    assert len(collect(loader)) == len(loader)  # a pass after close() starts new workers
    loader.close()


def test_persistent_workers_keep_the_order_through_breaks_evaluation_and_resume(dataset):
    """A 2-worker loader broken off mid-epoch, then an evaluation pass (itself broken off and restarted), then
    the rest of the epoch and the next: the batches of an uninterrupted 0-worker loader; and a fresh loader
    restored from the state at the break yields the same, across the epoch boundary too."""
    split = dataset.split("train")
    two = DataConfig(**{**config().__dict__, "workers": 2})

    def loader(cfg: DataConfig, train: bool = True):
        return create_loader(split, cfg, train=train, seed=5, channels_last=False)

    reference = loader(config())
    reference.set_epoch(2)
    epoch2 = collect(reference)
    reference.set_epoch(3)
    epoch3 = collect(reference)
    evaluation = collect(loader(config(), train=False))

    def same(got: list, want: list) -> None:
        assert len(got) == len(want) > 0
        for (a, la, ia), (b, lb, ib) in zip(got, want):
            assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(a, b)

    run, val = loader(two), loader(two, train=False)
    run.set_epoch(2)
    same(collect(run), epoch2)  # worker-count independent
    run.rewind()
    for done, batch in enumerate(run, 1):
        if done == 2:
            break  # max_steps or a signal
    state = run.state_dict()
    assert state["epoch"] == 2 and state["batches_done"] == 2
    next(iter(val))  # an evaluation pass broken off after one batch ...
    val.rewind()
    same(collect(val), evaluation)  # ... and run whole
    same(collect(run), epoch2[2:])
    run.set_epoch(3)
    same(collect(run), epoch3)
    resumed = loader(two)
    resumed.load_state_dict(state)
    same(collect(resumed), epoch2[2:])
    resumed.set_epoch(3)
    same(collect(resumed), epoch3)
    for ld in (run, val, resumed):
        ld.close()


GONE = list(range(10)) + [17]  # eval batches of 5: 0-4 and 5-9 fail whole, 15-19 loses one


def with_missing_images(dataset, tmp_path, workers: int):
    from fastprod.data.manifest import SplitView

    good = dataset.split("train")
    paths = [str(tmp_path / f"gone-{i}.png") if i in GONE else p for i, p in enumerate(good.paths)]
    return create_loader(SplitView("train", paths, good.labels, good.image_ids),
                         DataConfig(**{**config().__dict__, "workers": workers}), train=False,
                         quarantine_log=tmp_path / "log.jsonl")


def test_failures_are_counted_per_pass_with_persistent_workers(dataset, tmp_path):
    """Two batches whose every image is missing and one image missing in another: counted on every pass,
    by the same workers."""
    loader = with_missing_images(dataset, tmp_path, workers=2)
    for rerun in (1, 2):
        loader.rewind()
        batches = list(loader)
        assert torch.cat([b.indices for b in batches]).tolist() == [i for i in range(N) if i not in GONE]
        assert [b.dropped for b in batches] == [0, 1, 0]
        assert loader.failures == len(GONE) and loader.failures_total == rerun * len(GONE)
        assert loader.batches_done == len(loader) == 5
    loader.close()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2 * len(GONE)  # logged by the workers


@pytest.mark.parametrize("lookahead", [0, 1])
@pytest.mark.filterwarnings("ignore:quarantined at load time")
def test_a_batch_loaded_ahead_counts_only_once_handed_out(dataset, tmp_path, lookahead):
    """With the next batch already loaded and on its way to the device (lookahead 1: the CUDA path's order of
    events, run here on the CPU) the position and failure counts are those of the batches handed out: the
    failed batches before the first one are counted with it, and a loader resumed from a break yields the rest."""
    first = with_missing_images(dataset, tmp_path, workers=0)
    first._feed.lookahead = lookahead
    batch = next(iter(first))
    assert batch.indices.tolist() == [10, 11, 12, 13, 14]
    state = first.state_dict()
    assert state == {"epoch": 0, "batches_done": 3, "failures": 10, "failures_total": 10}
    resumed = with_missing_images(dataset, tmp_path, workers=0)
    resumed._feed.lookahead = lookahead
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b.indices.tolist() for b in rest] == [[15, 16, 18, 19], [20, 21, 22, 23]]
    assert [b.dropped for b in rest] == [1, 0]
    assert resumed.state_dict() == {"epoch": 0, "batches_done": 5, "failures": 11, "failures_total": 11}


def test_a_process_ends_with_its_loader_workers_running(dataset):
    """No close(), a pass broken off with batches in flight: the interpreter still exits, and the workers with it."""
    from training import launch

    code = (
        "import multiprocessing\n"
        "from fastprod.config import DataConfig\n"
        "from fastprod.data.loaders import create_loader\n"
        "from fastprod.data.manifest import Manifest\n"
        f"cfg = DataConfig(manifest='unused', image_size={SIZE}, batch_size=2, workers=2)\n"
        f"loader = create_loader(Manifest.load({str(dataset.directory)!r}).split('train'), cfg, train=True)\n"
        "next(iter(loader))\n"
        "print(*[p.pid for p in multiprocessing.active_children()])\n"
    )
    done = launch([sys.executable, "-c", code], timeout=120)
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z", pid  # gone (or a zombie)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: pinned memory and the side-stream "
                    "prefetch are the CUDA path of DeviceFeed")
def test_cuda_batches_match_the_cpu_while_the_step_runs_behind(dataset):
    """Each batch is read on the current stream only after a long kernel there (a step still running): if its
    upload were not awaited, or its memory not recorded on that stream, a later upload on the side stream
    would overwrite it first."""
    split = dataset.split("train")
    cpu = collect(create_loader(split, config(), train=True, seed=5))
    loader = create_loader(split, config(), train=True, seed=5, device=torch.device("cuda"))
    got = []
    for batch in loader:
        assert batch.images.is_cuda and batch.labels.is_cuda and batch.images.dtype == torch.float32
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        torch.cuda._sleep(20_000_000)  # ~10 ms of a step before the batch is read
        got.append((batch.images.clone(), batch.labels.clone(), batch.indices))
    torch.cuda.synchronize()
    assert len(got) == len(cpu) > 0
    for (a, la, ia), (b, lb, ib) in zip(got, cpu):
        assert torch.equal(ia, ib) and torch.equal(la.cpu(), lb)
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-6)
