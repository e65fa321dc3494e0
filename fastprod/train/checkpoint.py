"""Crash-safe, verified checkpoints through DeepSpeed, plus weight-only snapshots at SGDR cycle ends.

Layout under `<run>/checkpoints/`:
    step-000120/          DeepSpeed model + optimizer states, `trainer_rank<r>.pt` per rank (sampler
                          position, RNG states, counters, O2U sums: tensors and plain values only) and
                          `checkpoint.json` (size and SHA-256 of every file, written last)
    latest                the tag of the newest checkpoint (informative: resume scans the folders)

Saving writes into `.tmp-step-000120/`, adds `checkpoint.json` and only then renames the folder into
place, so a folder named `step-*` with a matching `checkpoint.json` is complete. Resume takes the most
recently written checkpoint whose files match their sizes and checksums; a damaged one (truncated,
zero-byte, missing file) is reported by name and the next older one is used, and with none intact the run
stops with a message instead of starting over. Leftover `.tmp-*` folders of killed saves are removed at
start-up. The newest `keep` checkpoints by write order are kept (never the one just written). Before a
save the free space is checked against the last checkpoint's size; a save that fails (disk full) removes
its partial folder and stops with a message naming the directory and the checkpoint to resume from.

Nothing in a run directory can execute code on load: every file is read with `torch.load(weights_only=True)`
(DeepSpeed's files through `SafeCheckpointEngine`, which allows only the few DeepSpeed classes they hold).

`<run>/snapshots/cycle-<k>.pt` holds the fp32 weights at the end of SGDR cycle k (the snapshot
ensemble members, seed section 1), and `<run>/final/model.pt` the weights at the end of training.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from fastprod.files import write_json, write_text
from fastprod.models import refused_global
from fastprod.train.distributed import Dist, all_reduce, barrier
from fastprod.train.errors import RunError

MANIFEST = "checkpoint.json"
# The only non-tensor classes DeepSpeed's own checkpoint files contain (ZeRO optimizer states).
DEEPSPEED_SAFE_GLOBALS = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading without pickle execution (`weights_only=True`)."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(DEEPSPEED_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """Every RNG the run draws from, as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, step: int) -> dict:
    """Record size and checksum of every file under `folder` in `folder/checkpoint.json`."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {"step": step, "written_ns": time.time_ns(), "files": files}
    write_json(folder / MANIFEST, manifest, indent=1)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return manifest if isinstance(manifest.get("files"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def verify(folder: Path, manifest: dict, world: int) -> str | None:
    """Why the checkpoint in `folder` cannot be used, or None when every file matches its `manifest`."""
    files = manifest["files"]
    for rank in range(world):
        if f"trainer_rank{rank}.pt" not in files:
            saved = sum(n.startswith("trainer_rank") for n in files)
            return f"no trainer state for rank {rank} (saved by {saved} ranks)"
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != record["size"]:
            return f"{name} has {path.stat().st_size} bytes, {record['size']} were written"
        if _sha256(path) != record["sha256"]:
            return f"{name} does not match its checksum"
    return None


class Checkpointer:
    def __init__(self, engine, run_dir: Path, dist: Dist, keep: int) -> None:
        self.engine, self.dist, self.keep = engine, dist, keep
        self.dir = run_dir / "checkpoints"
        self.snapshot_dir = run_dir / "snapshots"
        self.final_dir = run_dir / "final"
        self.resumed_from: str | None = None
        engine.checkpoint_engine = SafeCheckpointEngine(engine._config)
        if dist.is_main:
            for stale in self.dir.glob(".tmp-*"):  # saves killed mid-way
                shutil.rmtree(stale, ignore_errors=True)
        barrier()

    def checkpoints(self) -> list[tuple[Path, dict | None]]:
        """(folder, its manifest or None) of every step-* folder, most recently written first (folders without a
        readable manifest, i.e. incomplete saves, last)."""
        found = [(p, read_manifest(p)) for p in self.dir.glob("step-*") if p.is_dir()]
        return sorted(found, key=lambda f: (int(f[1].get("written_ns", 0)) if f[1] else -1, f[0].name), reverse=True)

    def _intact(self) -> Path | None:
        """The newest checkpoint that verifies (rank 0 checks, every rank gets the answer)."""
        candidates = self.checkpoints()
        complete = [(folder, manifest) for folder, manifest in candidates if manifest is not None]
        choice = -1
        if self.dist.is_main:
            for folder, manifest in candidates:
                if manifest is None:
                    warnings.warn(f"ignoring checkpoint {folder}: no readable {MANIFEST} (an incomplete save, or "
                                  f"written by an older fastprod)")
            for i, (folder, manifest) in enumerate(complete):
                problem = verify(folder, manifest, self.dist.world)
                if problem is None:
                    choice = i
                    break
                warnings.warn(f"checkpoint {folder} is damaged ({problem}); trying the one before it")
        choice = int(all_reduce([choice], self.dist.device, op=torch.distributed.ReduceOp.MAX)[0])
        if choice < 0 and candidates:
            raise RunError(f"no intact checkpoint in {self.dir} ({len(candidates)} damaged, see the warnings above); "
                           f"the run cannot resume: set another run.dir to train from scratch")
        return complete[choice][0] if choice >= 0 else None

    def save(self, step: int, trainer_state: dict) -> Path:
        """Collective: every rank calls it at the same step."""
        tag, tmp = f"step-{step:09d}", f".tmp-step-{step:09d}"
        self._check_free_space(tag)
        try:
            if self.dist.is_main:
                self.dir.mkdir(parents=True, exist_ok=True)
            barrier()
            self.engine.save_checkpoint(str(self.dir), tag=tmp, save_latest=False)
            (self.dir / tmp).mkdir(parents=True, exist_ok=True)
            torch.save({**trainer_state, "rng": rng_state()}, self.dir / tmp / f"trainer_rank{self.dist.rank}.pt")
            barrier()
            if self.dist.is_main:
                write_manifest(self.dir / tmp, step)
        except (OSError, RuntimeError) as err:
            shutil.rmtree(self.dir / tmp, ignore_errors=True)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RunError(f"saving checkpoint {tag} to {self.dir} failed ({self._free()} free): {reason}; "
                           f"{self._resume_hint()}") from None
        if self.dist.is_main:
            final = self.dir / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(self.dir / tmp, final)
            write_text(self.dir / "latest", tag)
            for old in [p for p, _ in self.checkpoints() if p != final][self.keep - 1:]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return self.dir / tag

    def _free(self) -> str:
        return f"{shutil.disk_usage(self.dir if self.dir.exists() else self.dir.parent).free / 2**20:.0f} MiB"

    def _resume_hint(self) -> str:
        intact = next((p for p, manifest in self.checkpoints() if manifest is not None), None)
        return (f"free space and re-run the same command to resume from {intact}" if intact is not None
                else "no earlier checkpoint exists")

    def _check_free_space(self, tag: str) -> None:
        """Refuse a save that cannot fit: the last checkpoint's size (plus 10%) must be free."""
        short, needed = 0.0, 0.0
        if self.dist.is_main and self.dir.exists():
            last = next((m for _, m in self.checkpoints() if m is not None), None)
            needed = 1.1 * sum(r["size"] for r in last["files"].values()) if last else 0
            short = float(shutil.disk_usage(self.dir).free < needed)
        if all_reduce([short], self.dist.device, op=torch.distributed.ReduceOp.MAX)[0]:
            raise RunError(f"not enough free space in {self.dir} to save checkpoint {tag} ({self._free()} free, "
                           f"the last checkpoint took {needed / 2**20:.0f} MiB); {self._resume_hint()}")

    def load(self) -> dict | None:
        """Restore engine, optimizer and RNG from the newest intact checkpoint; return the trainer state."""
        folder = self._intact()
        if folder is None:
            return None
        try:
            path, _ = self.engine.load_checkpoint(str(self.dir), tag=folder.name)
            state = torch.load(folder / f"trainer_rank{self.dist.rank}.pt", weights_only=True)
            set_rng_state(state.pop("rng"))
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError) as err:
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            code = refused_global(err)
            reason = f"it holds Python objects: {code}" if code else (lines[0] if lines else type(err).__name__)
            raise RunError(f"checkpoint {folder} matches its checksums but cannot be loaded as plain tensors "
                           f"({reason}); nothing in it was executed. It was not written by this fastprod (or was "
                           f"altered): restore the run directory, or set another run.dir") from None
        if path is None:
            raise RunError(f"DeepSpeed could not load checkpoint {folder}")
        self.resumed_from = folder.name
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
