"""A training run never executes, loses or pretends: adversarial run directories, damaged checkpoints, a
full disk, a second training on the same directory, a moved image root, a loss that is never finite.

Every case runs the real launcher (`python launch/train.py`, DeepSpeed on gloo) in a subprocess on copies
of one finished tiny run, and checks the exit code, the one-line message and what is left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastprod.config import load_config
from fastprod.data.loaders import create_loader
from fastprod.data.manifest import Manifest, SplitView
from fastprod.train.checkpoint import write_manifest
from synthetic_data import prepared_dataset
from training import ROOT, TINY, env, launch, train, write_config

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

EPOCHS = "schedule.epochs=2"  # 6 steps an epoch on the tiny dataset: checkpoints step-10 and step-12 are kept
NEWEST, OLDER = "step-000000012", "step-000000010"


class Payload:
    """A pickle that creates a file when unpickled: what a hostile file on shared storage would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_payload(path: Path, marker: Path) -> None:
    torch.save({"module": Payload(marker)}, path)


def weights(run: Path) -> dict:
    return torch.load(run / "final" / "model.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def finished(manifest_dir, tmp_path_factory) -> Path:
    """One uninterrupted 12-step run; tests work on copies."""
    tmp = tmp_path_factory.mktemp("finished")
    config = write_config(tmp, manifest_dir, "base")
    launch([sys.executable, "launch/train.py", "--config", str(config), "--set", EPOCHS])
    return tmp / "base"


def copy_run(finished: Path, manifest_dir: Path, tmp_path: Path, unfinished: bool = True) -> tuple[Path, Path]:
    """(config, run dir) of a copy of the finished run; `unfinished` removes its final weights and summary
    so that a resume has to do the last part of the work again."""
    config = write_config(tmp_path, manifest_dir, "run")
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    if unfinished:
        shutil.rmtree(run / "final")
        (run / "summary.json").unlink()
    return config, run


def assert_refused(done: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("target", ["trainer_rank0.pt", "mp_rank_00_model_states.pt"])
def test_resume_never_unpickles_code_from_the_run_directory(finished, manifest_dir, tmp_path, target):
    config, run = copy_run(finished, manifest_dir, tmp_path)
    marker = tmp_path / "executed"
    plant_payload(run / "checkpoints" / NEWEST / target, marker)
    write_manifest(run / "checkpoints" / NEWEST, 12)  # the attacker also fixes the checksums
    done = train(config, EPOCHS)
    assert not marker.exists(), "a pickle from the run directory was executed"
    assert_refused(done, 1, "run error:", NEWEST, "nothing in it was executed")


@pytest.mark.parametrize("damage", ["truncated model states", "zero-byte trainer state", "checksum manifest missing"])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(finished, manifest_dir, tmp_path, damage):
    config, run = copy_run(finished, manifest_dir, tmp_path)
    newest = run / "checkpoints" / NEWEST
    if damage == "truncated model states":
        data = (newest / "mp_rank_00_model_states.pt").read_bytes()
        (newest / "mp_rank_00_model_states.pt").write_bytes(data[: len(data) // 2])
    elif damage == "zero-byte trainer state":
        (newest / "trainer_rank0.pt").write_bytes(b"")
    else:
        (newest / "checkpoint.json").unlink()
    done = train(config, EPOCHS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {OLDER}" in done.stdout and NEWEST in done.stderr  # the warning names the bad one
    ref, resumed = weights(finished), weights(run)
    for key in ref:  # steps 11 and 12 replayed exactly
        torch.testing.assert_close(resumed[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)


def test_no_intact_checkpoint_is_a_clear_refusal(finished, manifest_dir, tmp_path):
    config, run = copy_run(finished, manifest_dir, tmp_path)
    for tag in (NEWEST, OLDER):
        (run / "checkpoints" / tag / "trainer_rank0.pt").write_bytes(b"")
    assert_refused(train(config, EPOCHS), 1, "no intact checkpoint", str(run / "checkpoints"))
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [OLDER, NEWEST]  # nothing deleted


def test_a_missing_latest_pointer_does_not_restart_the_run(finished, manifest_dir, tmp_path):
    config, run = copy_run(finished, manifest_dir, tmp_path, unfinished=False)
    (run / "checkpoints" / "latest").unlink()
    done = train(config, EPOCHS)
    assert done.returncode == 0 and "run already complete" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [OLDER, NEWEST]


def test_pruning_keeps_the_newest_written_checkpoints(manifest_dir, tmp_path):
    """keep_checkpoints counts by write order: a checkpoint just written is never the one removed, even
    when older folders carry higher step numbers."""
    from fastprod.train.distributed import init_distributed
    from fastprod.train.engine import Trainer

    cfg = load_config(None, [f"data.manifest={manifest_dir}", "data.image_size=32", "data.batch_size=8",
                             "data.workers=0", "model.name=resnet10t", f"run.dir={tmp_path / 'run'}",
                             "run.progress=false", "run.keep_checkpoints=2"])
    trainer = Trainer(cfg, init_distributed())
    for step in (50, 10, 20):
        trainer.step = step
        trainer.save_checkpoint()
    kept = sorted(p.name for p in trainer.checkpointer.dir.glob("step-*"))
    assert kept == ["step-000000010", "step-000000020"]
    assert trainer.checkpointer.load()["step"] == 20  # the newest written, not the highest number
    trainer.lock.release()


def test_a_partial_metrics_line_is_dropped_on_resume(finished, manifest_dir, tmp_path):
    config, run = copy_run(finished, manifest_dir, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 13, "lo')  # killed mid-write
    done = train(config, EPOCHS)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines if ln["kind"] == "train"] == list(range(1, 13))


def test_a_run_directory_is_locked_while_it_trains(manifest_dir, tmp_path):
    config = write_config(tmp_path, manifest_dir, "run")
    run, long = tmp_path / "run", "schedule.epochs=200"  # still training when the second command starts
    first = subprocess.Popen([sys.executable, "launch/train.py", "--config", str(config), "--set", long],
                             cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = train(config, long)
    assert first.poll() is None, "the first run ended before the second one started"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert_refused(second, 1, f"run.dir {run} is in use", f"PID {first.pid}")
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.endswith("}")]
    steps = [ln["step"] for ln in lines if ln["kind"] == "train"]
    assert steps == list(range(1, len(steps) + 1))  # one writer
    # SIGKILL leaves no stale lock: the next command gets past it (to the settings check)
    assert_refused(train(config, long, "optim.lr=0.1"), 2, "optim.lr: 0.05 -> 0.1")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a chosen size, resizable (the user freeing space); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def resize(mib: int) -> Path:
        opts = f"remount,size={mib}m" if os.path.ismount(mount) else f"size={mib}m"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mount)], check=True)
        return mount
    yield resize
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_stops_the_run_with_a_message_and_it_resumes_later(manifest_dir, tmp_path, small_disk):
    disk = small_disk(20)  # a checkpoint takes ~40 MB: the first save runs out of space mid-write
    config = tmp_path / "run.yaml"
    config.write_text(TINY.format(manifest=manifest_dir, run_dir=disk / "run", workers=0, precision="fp32"))
    checkpoints = disk / "run" / "checkpoints"
    assert_refused(train(config, EPOCHS), 1, "saving checkpoint step-000000002", str(checkpoints),
                   "no earlier checkpoint")
    assert not list(checkpoints.glob(".tmp-*")) and not (disk / "run" / "summary.json").exists()

    small_disk(60)  # room for one checkpoint: the second is refused before it is written
    assert_refused(train(config, EPOCHS), 1, "not enough free space", f"resume from {checkpoints / 'step-000000002'}")
    assert not list(checkpoints.glob(".tmp-*"))

    small_disk(200)
    done = train(config, EPOCHS)
    assert done.returncode == 0 and "resumed from step-000000002" in done.stdout, done.stderr[-3000:]


def test_a_changed_path_spelling_is_the_same_run(finished, manifest_dir, tmp_path):
    copy_run(finished, manifest_dir, tmp_path, unfinished=False)
    relative = tmp_path / "relative.yaml"
    relative.write_text(TINY.format(manifest=os.path.relpath(manifest_dir, tmp_path), run_dir="run", workers=0,
                                    precision="fp32"))
    done = train(relative, EPOCHS, cwd=tmp_path)
    assert done.returncode == 0 and "run already complete" in done.stdout, done.stderr[-3000:]
    other = train(relative, EPOCHS, "optim.lr=0.1", cwd=tmp_path)
    assert_refused(other, 2, "optim.lr: 0.05 -> 0.1")
    assert "delete" not in other.stderr


@pytest.fixture
def own_dataset(tmp_path) -> tuple[Path, Path]:
    """(dataset folder holding raw/ and prepared/, config) for tests that move or delete images."""
    base = tmp_path / "dataset"
    prepared_dataset(base, classes=4, train_images=100, val_per_class=4, seed=1)
    config = tmp_path / "run.yaml"
    config.write_text(TINY.format(manifest=base / "prepared", run_dir=tmp_path / "run", workers=0, precision="fp32"))
    return base, config


def test_a_moved_or_unmounted_image_root_is_refused_before_training(own_dataset, tmp_path):
    base, config = own_dataset
    root = base / "raw"
    root.rename(tmp_path / "elsewhere")
    assert_refused(train(config, "schedule.max_steps=2"), 2, "dataset error:", str(root), "not mounted")
    root.mkdir()  # an empty mount point
    assert_refused(train(config, "schedule.max_steps=2"), 2, "dataset error:", str(root))
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_dataset_moved_with_its_prepared_copy_still_trains(own_dataset, tmp_path):
    base, _ = own_dataset
    moved = tmp_path / "moved"
    base.rename(moved)
    config = tmp_path / "moved.yaml"
    config.write_text(TINY.format(manifest=moved / "prepared", run_dir=tmp_path / "run", workers=0, precision="fp32"))
    done = train(config, "schedule.max_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["quarantined_at_load"] == 0 and summary["val_images"] == 16


def test_images_failing_at_run_time_beyond_the_limit_stop_the_run(own_dataset, tmp_path):
    base, config = own_dataset
    split = Manifest.load(base / "prepared").split("train")
    for path in split.paths[::10]:  # 10% of the training images disappear after prepare
        os.unlink(path)
    assert_refused(train(config), 1, "run error:", "train images failed to load", "data.max_load_failures")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "final").exists()
    logged = (tmp_path / "run" / "quarantine_runtime.jsonl").read_text().splitlines()
    assert 2 <= len(logged) <= len(split.paths[::10])
    # a larger allowance trains on what is left and counts every dropped image
    done = train(config, "data.max_load_failure_fraction=0.2", "schedule.max_steps=12")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["quarantined_at_load"] == 2 * len(split.paths[::10])  # both epochs' passes


@pytest.mark.parametrize("backend", ["pil", "dali"])
def test_loaders_count_batches_whose_every_image_failed(manifest_dir, tmp_path, backend):
    good = Manifest.load(manifest_dir).split("val")
    gone = [str(tmp_path / f"missing-{i}.jpg") for i in range(len(good))]
    split = SplitView("val", gone[:10] + good.paths[10:], good.labels, good.image_ids)
    cfg = load_config(None, [f"data.manifest={manifest_dir}", "data.image_size=32", "data.eval_batch_size=5",
                             "data.workers=1", f"data.backend={backend}"]).data
    loader = create_loader(split, cfg, train=False, quarantine_log=tmp_path / "log.jsonl")
    batches = list(loader)
    assert sum(len(b.labels) for b in batches) == len(good) - 10  # two whole batches failed, never yielded
    assert loader.failures == loader.failures_total == 10 and loader.batches_done == -(-len(good) // 5)
    loader.rewind()
    list(loader)
    assert loader.failures == 10 and loader.failures_total == 20


def test_a_loss_that_is_never_finite_stops_the_run(manifest_dir, tmp_path):
    config = write_config(tmp_path, manifest_dir, "run")
    done = train(config, "optim.lr=1e30", "run.max_skipped_in_a_row=3")
    assert_refused(done, 1, "not finite in 3 steps in a row", "optim.lr")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("backend", ["pil", "dali"])
def test_loaders_refuse_an_extremely_elongated_image(manifest_dir, tmp_path, backend):
    """prepare's geometry limits hold at load time too, on DALI's own JPEG path as well."""
    from PIL import Image

    thin = tmp_path / "thin.jpg"
    Image.new("RGB", (2, 400), (200, 10, 10)).save(thin)
    good = Manifest.load(manifest_dir).split("val")
    split = SplitView("val", [str(thin)] + good.paths[1:], good.labels, good.image_ids)
    cfg = load_config(None, [f"data.manifest={manifest_dir}", "data.image_size=32", "data.workers=1",
                             f"data.backend={backend}"]).data
    loader = create_loader(split, cfg, train=False, quarantine_log=tmp_path / "log.jsonl")
    assert sum(len(b.labels) for b in loader) == len(good) - 1 and loader.failures == 1
    record = json.loads((tmp_path / "log.jsonl").read_text())
    assert record["path"] == str(thin) and "extreme aspect ratio 2:400" in record["reason"]
