"""End-to-end training through DeepSpeed on the CPU: every launcher, checkpoints, kill-and-resume."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastprod.config import load_config
from fastprod.data.manifest import Manifest
from fastprod.train.checkpoint import DEEPSPEED_SAFE_GLOBALS
from training import BIN, ROOT, env, launch, write_config

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "final" / "model.pt", map_location="cpu")


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return max((ln["step"] for ln in lines if ln["kind"] == "train"), default=0)


def train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [ln for ln in lines if ln["kind"] == "train"]


@pytest.fixture(scope="module")
def reference_run(manifest_dir, tmp_path_factory) -> Path:
    """An uninterrupted single-process run: `python launch/train.py`."""
    tmp = tmp_path_factory.mktemp("ref")
    launch([sys.executable, "launch/train.py", "--config", str(write_config(tmp, manifest_dir, "ref"))])
    return tmp / "ref"


def test_single_process_run_writes_everything(reference_run, manifest_dir):
    summary = json.loads((reference_run / "summary.json").read_text())
    iters = len(Manifest.load(manifest_dir).split("train")) // 16
    assert summary["world_size"] == 1 and summary["skipped_steps"] == 0 and summary["steps"] == 3 * iters
    assert 0.0 <= summary["val_top1_error"] <= 1.0 and summary["val_images"] == 6 * 4
    lines = [json.loads(ln) for ln in (reference_run / "metrics.jsonl").read_text().splitlines()]
    train = [ln for ln in lines if ln["kind"] == "train"]
    assert [ln["step"] for ln in train] == list(range(1, summary["steps"] + 1))
    assert all(ln["img_per_s"] > 0 and ln["lr"] > 0 and 0 < ln["mfu"] < 1 and ln["peak_mem_gib"] > 0 for ln in train)
    # training throughput is images over step time: validation, snapshots and checkpoints are not in it
    assert summary["train_img_per_s"] * summary["wall_time_s"] > summary["steps"] * 16 and 0 < summary["mfu"] < 1
    assert len([ln for ln in lines if ln["kind"] == "val"]) == 3
    # SGDR cycles of 1 and 2 epochs -> two snapshots; the latest two checkpoints are kept
    assert sorted(p.name for p in (reference_run / "snapshots").iterdir()) == ["cycle-0.pt", "cycle-1.pt"]
    kept = sorted(p.name for p in (reference_run / "checkpoints").glob("step-*"))
    assert len(kept) == 2 and (reference_run / "checkpoints" / "latest").read_text() == kept[-1]
    assert (reference_run / "resolved.yaml").exists() and any((reference_run / "tb").iterdir())
    o2u = [list(csv.DictReader(open(reference_run / "o2u" / f"cycle-{c}.csv"))) for c in (0, 1)]
    assert all(len(rows) == len(Manifest.load(manifest_dir).split("train")) for rows in o2u)
    # each epoch draws distinct samples; drop_last leaves the remainder unscored (weight 1)
    assert sum(row["score"] != "nan" for row in o2u[0]) == iters * 16
    snapshot = torch.load(reference_run / "snapshots" / "cycle-1.pt", map_location="cpu")
    final = final_weights(reference_run)
    assert all(torch.equal(snapshot[k], final[k]) for k in final)  # last cycle ends with training


def test_metrics_are_logged_on_log_steps_only(reference_run, manifest_dir, tmp_path):
    """run.log_every_steps = 4: lines at step 1, every 4th step and the last; each line's loss is the mean of the
    per-step losses since the previous line in the same seeded run logged at every step."""
    config = write_config(tmp_path, manifest_dir, "sparse")
    launch([sys.executable, "launch/train.py", "--config", str(config), "--set", "run.log_every_steps=4"])
    every_step = {ln["step"]: ln["loss"] for ln in train_lines(reference_run)}
    total = max(every_step)
    sparse = train_lines(tmp_path / "sparse")
    assert [ln["step"] for ln in sparse] == sorted({1, total} | set(range(4, total + 1, 4)))
    previous = 0
    for line in sparse:
        losses = [every_step[s] for s in range(previous + 1, line["step"] + 1)]
        assert line["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        assert line["skipped"] == 0 and 0 <= line["data_wait"] <= 1
        previous = line["step"]


def test_kill_and_resume_matches_uninterrupted(reference_run, manifest_dir, tmp_path):
    config = write_config(tmp_path, manifest_dir, "killed")
    run_dir = tmp_path / "killed"
    total = json.loads((reference_run / "summary.json").read_text())["steps"]
    kill_at = random.Random(os.getpid()).randint(3, total - 2)
    proc = subprocess.Popen([sys.executable, "launch/train.py", "--config", str(config)], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while steps_logged(run_dir) < kill_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final").exists(), "the run finished before it could be killed"
    # a save interrupted mid-way leaves a .tmp folder behind; it must be ignored and cleaned up
    (run_dir / "checkpoints" / ".tmp-step-999999999").mkdir(parents=True, exist_ok=True)
    done = launch([sys.executable, "launch/train.py", "--config", str(config)])
    assert "resumed from step-" in done.stdout
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    ref, resumed = final_weights(reference_run), final_weights(run_dir)
    assert ref.keys() == resumed.keys()
    for key in ref:
        torch.testing.assert_close(resumed[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    train = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in train if ln["kind"] == "train"] == list(range(1, total + 1))
    # running the finished command again reports the finished run instead of training again
    again = launch([sys.executable, "launch/train.py", "--config", str(config), "--set", "data.workers=1"])
    assert "run already complete" in again.stdout  # (how data is fed may change on resume)
    # ... and refuses to pass off this run as one with other settings
    other = subprocess.run([sys.executable, "launch/train.py", "--config", str(config), "--set", "loss.name=ce",
                            "--set", "optim.lr=0.1"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "loss.name: 'sce' -> 'ce'" in other.stderr and "optim.lr: 0.05 -> 0.1" in other.stderr
    assert load_config(run_dir / "resolved.yaml").loss.name == "sce"  # the run's own record is untouched


def test_deepspeed_launcher_two_ranks_gloo(manifest_dir, tmp_path):
    config = write_config(tmp_path, manifest_dir, "ds2", workers=1, precision="bf16")
    port = str(29500 + os.getpid() % 1000)
    launch([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port, "launch/train.py", "--config", str(config),
            "--set", "data.batch_size=8", "--set", "schedule.epochs=1"])  # bf16 autocast is slow on CPU
    summary = json.loads((tmp_path / "ds2" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["precision"] == "bf16"
    assert summary["val_images"] == 6 * 4  # validation shards add up to the whole split
    assert (tmp_path / "ds2" / "final" / "model.pt").exists()
    rows = list(csv.DictReader(open(tmp_path / "ds2" / "o2u" / "cycle-0.csv")))
    assert sum(row["score"] != "nan" for row in rows) > len(rows) // 2 + 1  # both ranks' shards were gathered
    for shm in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"):
        shm.unlink(missing_ok=True)


def test_torchrun_two_ranks_zero2(manifest_dir, tmp_path):
    """ZeRO-2 over 2 ranks with the fused_linear head (the classifier weight the fused loss reads directly,
    outside the engine's forward; its gradients and optimizer state partitioned across the ranks): the same 4
    steps end at the losses and weights of the plain reference loss without ZeRO, and so does a resume from the
    sharded step-2 checkpoint."""
    config = write_config(tmp_path, manifest_dir, "z2")
    port = 30500 + os.getpid() % 1000

    def torchrun(name: str, offset: int, *sets: str) -> subprocess.CompletedProcess:
        args = [a for s in (f"run.dir={tmp_path / name}", "data.batch_size=8", "schedule.max_steps=4", *sets)
                for a in ("--set", s)]
        return launch([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port + offset),
                       "launch/train.py", "--config", str(config), *args])

    zero2_sets = ("loss.impl=fused_linear", "run.zero_stage=2")
    torchrun("ref", 0, "loss.impl=reference", "run.zero_stage=0")
    torchrun("z2", 1, *zero2_sets)
    reference, zero2 = tmp_path / "ref", tmp_path / "z2"
    summary = json.loads((zero2 / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert len(summary["peak_mem_gib_per_rank"]) == 2 and summary["peak_mem_gib_per_rank"][0] == summary["peak_mem_gib"]
    assert all(0.1 < peak < 10 for peak in summary["peak_mem_gib_per_rank"])  # each process's own RSS, torch in it
    ref, fused = (torch.load(run / "final" / "model.pt", weights_only=True) for run in (reference, zero2))
    assert ref.keys() == fused.keys()
    for key in ref:  # float32 sums in another order (chunked head, reduce-scatter): rounding, no more
        torch.testing.assert_close(fused[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
    assert [ln["loss"] for ln in train_lines(zero2)] == pytest.approx([ln["loss"] for ln in train_lines(reference)],
                                                                      rel=1e-5)
    # the optimizer state is partitioned: each rank's shard holds the momentum of half of the parameters
    params = sum(v.numel() for k, v in fused.items() if not k.endswith(("running_mean", "running_var", "_tracked")))
    shards = []
    for rank in (0, 1):
        with torch.serialization.safe_globals(DEEPSPEED_SAFE_GLOBALS):
            shards.append(torch.load(zero2 / "checkpoints" / "step-000000004" / f"zero_pp_rank_{rank}_mp_rank_00_optim"
                                     f"_states.pt", weights_only=True)["optimizer_state_dict"])
    held = [sum(s["momentum_buffer"].numel() for s in shard["base_optimizer_state"]["state"].values())
            for shard in shards]
    assert held[0] == held[1] and sum(held) == params + sum(sum(shard["group_paddings"]) for shard in shards)
    # resume from step 2: each rank's optimizer shard is restored
    shutil.rmtree(zero2 / "checkpoints" / "step-000000004")
    shutil.rmtree(zero2 / "final")
    (zero2 / "summary.json").unlink()
    assert "resumed from step-000000002" in torchrun("z2", 2, *zero2_sets).stdout
    resumed = torch.load(zero2 / "final" / "model.pt", weights_only=True)
    for key in ref:
        torch.testing.assert_close(resumed[key], fused[key], rtol=1e-5, atol=1e-6, msg=key)


def test_config_error_exits_cleanly(manifest_dir, tmp_path):
    config = write_config(tmp_path, manifest_dir, "bad")
    done = subprocess.run([sys.executable, "launch/train.py", "--config", str(config), "--set", "optim.lrr=1"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "optim.lrr" in done.stderr
    missing = subprocess.run([sys.executable, "launch/train.py", "--config", str(config), "--set",
                              f"data.manifest={tmp_path / 'nowhere'}"], cwd=ROOT, env=env(), capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr


def test_sigterm_saves_and_exits(manifest_dir, tmp_path):
    config = write_config(tmp_path, manifest_dir, "term")
    run_dir = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "launch/train.py", "--config", str(config), "--set",
                             "run.ckpt_every_steps=1000"], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while steps_logged(run_dir) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 143 and "stopped by signal" in out
    tag = (run_dir / "checkpoints" / "latest").read_text()
    state = torch.load(run_dir / "checkpoints" / tag / "trainer_rank0.pt", weights_only=True)
    assert state["step"] >= 3 and tag == f"step-{state['step']:09d}"  # saved at the step it stopped on
