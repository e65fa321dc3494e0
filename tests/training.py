"""Helpers for tests that train through the real launchers in subprocesses (not a test module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's launchers, whether or not it is activated
TINY = """
data: {{manifest: {manifest}, image_size: 32, batch_size: 16, eval_batch_size: 64, workers: {workers}}}
model: {{name: resnet10t, drop_rate: 0.5, channels_last: true}}
optim: {{lr: 0.05, weight_decay: 3.0e-4}}
loss: {{name: sce, sce_alpha: 1.0, sce_beta: 0.5}}
o2u: {{enabled: true, warmup_cycles: 1}}
schedule: {{epochs: 3, cycle_epochs: 1, cycle_mult: 2}}
run: {{dir: {run_dir}, precision: {precision}, ckpt_every_steps: 2, log_every_steps: 1, progress: false}}
"""


def write_config(tmp_path: Path, manifest_dir: Path, name: str, workers: int = 0, precision: str = "fp32") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(manifest=manifest_dir, run_dir=tmp_path / name, workers=workers, precision=precision))
    return path


# What init_distributed and the launchers put in os.environ; in-process tests leave them behind, and a child
# process that inherited them would try to join that (in-process) group's port.
LAUNCHER_VARIABLES = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"})


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return {**e, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def train(config: Path, *overrides: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python launch/train.py --config CONFIG --set ...` in a subprocess, whatever its exit code."""
    sets = [a for o in overrides for a in ("--set", o)]
    return subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(config), *sets], cwd=cwd,
                          env=env(), capture_output=True, text=True, timeout=timeout)
