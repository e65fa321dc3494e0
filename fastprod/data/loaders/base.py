"""What every data backend yields and how it keeps its place in an epoch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float, normalised, on the training device
    labels: torch.Tensor  # [B] int64 on the training device
    indices: torch.Tensor  # [B] int64 sample indices into the split (CPU)
    dropped: int = 0  # samples of this batch that failed to load (quarantined at run time)


class Loader(ABC):
    """Base: epoch and in-epoch position, so a run resumes at the exact next batch."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batches_done = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def rewind(self) -> None:
        """Start the current epoch over (evaluation loaders are iterated whole, again and again)."""
        self.batches_done = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])

    @abstractmethod
    def __len__(self) -> int:
        """Batches per epoch on this rank."""

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch, from `batches_done` on."""
