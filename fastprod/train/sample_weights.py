"""How per-sample loss weights computed from the training itself (O2U, seed section 3) reach the trainer.

The trainer knows only this interface; a recipe stage builds the weighting and hands it in
(`fastprod.recipe.train.create_trainer`), so `train/` never imports the recipe layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class SampleWeights(Protocol):
    name: str  # its outputs go to <run>/<name>/

    def weights_for(self, indices: torch.Tensor) -> torch.Tensor:
        """Loss weight of each sample index of a training batch (on the training device)."""

    def record(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """The batch's per-sample unweighted losses, after the step."""

    def end_epoch(self) -> None:
        """Collective: an epoch of the training split has ended."""

    def end_cycle(self, cycle: int, out_dir: Path | None, image_ids: list[str], labels: np.ndarray) -> Path | None:
        """An SGDR cycle has ended: update the weights; the main rank (out_dir set) writes a report there."""

    def state_dict(self) -> dict:
        """Tensors and plain values only (checkpoints are loaded with weights_only=True)."""

    def load_state_dict(self, state: dict) -> None: ...
