"""`create_loader`: one loader interface over the data backends (`data.backend`).

A loader yields `Batch`es of normalised, channels_last float images on the training device with
their labels and sample indices (for per-sample state such as O2U weights), shards by
data-parallel rank, is seeded per epoch, and resumes mid-epoch through `state_dict()`; `close()` ends
what it keeps between passes (the PIL backend's worker processes).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastprod.config import ConfigError, DataConfig
from fastprod.data.loaders.base import Batch, Loader
from fastprod.data.loaders.dali import DALILoader
from fastprod.data.loaders.ffcv import FFCVLoader
from fastprod.data.loaders.pil import PILLoader
from fastprod.data.manifest import SplitView

BACKENDS = {"pil": PILLoader, "dali": DALILoader, "ffcv": FFCVLoader}  # dali/ffcv import their library on first use


def create_loader(
    split: SplitView, cfg: DataConfig, *, train: bool, rank: int = 0, world: int = 1, seed: int = 0,
    device: torch.device = torch.device("cpu"), channels_last: bool = True, quarantine_log: Path | None = None,
) -> Loader:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"data.backend: {cfg.backend!r} is not one of {list(BACKENDS)}")
    return BACKENDS[cfg.backend](
        split, cfg, train=train, rank=rank, world=world, seed=seed, device=device,
        channels_last=channels_last, quarantine_log=quarantine_log,
    )


__all__ = ["Batch", "Loader", "create_loader"]
