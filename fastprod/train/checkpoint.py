"""Crash-safe checkpoints through DeepSpeed, plus weight-only snapshots at SGDR cycle ends.

Layout under `<run>/checkpoints/`:
    step-000120/          DeepSpeed model + optimizer states, and `trainer_rank<r>.pt` per rank
                          (sampler position, RNG states, counters and any other Stateful part)
    latest                the tag to resume from, replaced atomically
Saving writes into `.tmp-step-000120/`, renames it into place and only then points `latest` at it,
so a kill at any moment leaves the previous checkpoint valid; leftover `.tmp-*` folders are removed
on the next save. The newest `keep` checkpoints are kept.

`<run>/snapshots/cycle-<k>.pt` holds the fp32 weights at the end of SGDR cycle k (the snapshot
ensemble members, seed section 1), and `<run>/final/model.pt` the weights at the end of training.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from fastprod.train.distributed import Dist, barrier


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Checkpointer:
    def __init__(self, engine, run_dir: Path, dist: Dist, keep: int) -> None:
        self.engine, self.dist, self.keep = engine, dist, keep
        self.dir = run_dir / "checkpoints"
        self.snapshot_dir = run_dir / "snapshots"
        self.final_dir = run_dir / "final"

    def latest_tag(self) -> str | None:
        latest = self.dir / "latest"
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        if not (self.dir / tag).is_dir():
            raise FileNotFoundError(f"{latest} points at missing checkpoint {self.dir / tag}")
        return tag

    def save(self, step: int, trainer_state: dict) -> Path:
        """Collective: every rank calls it at the same step."""
        tag, tmp = f"step-{step:09d}", f".tmp-step-{step:09d}"
        if self.dist.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        barrier()
        self.engine.save_checkpoint(str(self.dir), tag=tmp, save_latest=False)
        (self.dir / tmp).mkdir(parents=True, exist_ok=True)
        torch.save({**trainer_state, "rng": rng_state()}, self.dir / tmp / f"trainer_rank{self.dist.rank}.pt")
        barrier()
        if self.dist.is_main:
            final = self.dir / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(self.dir / tmp, final)
            _atomic_write_text(self.dir / "latest", tag)
            for old in sorted(self.dir.glob("step-*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return self.dir / tag

    def load(self) -> dict | None:
        """Restore engine, optimizer and RNG from the latest checkpoint; return the trainer state."""
        tag = self.latest_tag()
        if tag is None:
            return None
        path, _ = self.engine.load_checkpoint(str(self.dir), tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.dir / tag}")
        state = torch.load(self.dir / tag / f"trainer_rank{self.dist.rank}.pt", weights_only=False)
        set_rng_state(state.pop("rng"))
        return state

    def save_weights(self, path: Path) -> None:
        """Collective: fp32 module weights to `path` (rank 0 writes, atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = f".{path.name}.tmp"
        self.engine.save_16bit_model(str(path.parent), tmp_name)
        if self.dist.is_main:
            os.replace(path.parent / tmp_name, path)
        barrier()

    def save_snapshot(self, cycle: int) -> Path:
        path = self.snapshot_dir / f"cycle-{cycle}.pt"
        self.save_weights(path)
        return path
