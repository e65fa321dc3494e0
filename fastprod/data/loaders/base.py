"""What every data backend yields and how it keeps its place in an epoch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fastprod.data.sampler import epoch_batches


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float, normalised, on the training device
    labels: torch.Tensor  # [B] int64 on the training device
    indices: torch.Tensor  # [B] int64 sample indices into the split (CPU)
    dropped: int = 0  # samples of this batch that failed to load (quarantined at run time)


class Loader(ABC):
    """Base: this rank's seeded sample order, the epoch and the in-epoch position, so a run resumes at the
    exact next batch. Subclasses set `batch_size`, `train` (shuffle, drop the last partial batch), `rank`,
    `world` and `seed` and call `super().__init__(number of samples)`."""

    batch_size: int
    train: bool
    rank: int
    world: int
    seed: int

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.epoch = 0
        self.batches_done = 0
        self.failures = 0  # samples of this pass over the split that failed to load (quarantined at run time)
        self.failures_total = 0  # ... over every pass of the run

    def _dropped(self, count: int) -> None:
        """Count samples dropped from a batch, including batches whose every sample failed (never yielded)."""
        self.failures += count
        self.failures_total += count

    def _batches(self) -> list[list[tuple[int, int]]]:
        """This rank's batches of the current epoch, in the seeded order every backend shares."""
        return epoch_batches(
            self.num_samples, self.batch_size, epoch=self.epoch, seed=self.seed, rank=self.rank,
            world=self.world, shuffle=self.train, drop_last=self.train,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self._batches())

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches_done, self.failures = epoch, 0, 0

    def rewind(self) -> None:
        """Start the current epoch over (evaluation loaders are iterated whole, again and again)."""
        self.batches_done, self.failures = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "failures": self.failures,
                "failures_total": self.failures_total}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self.failures, self.failures_total = int(state.get("failures", 0)), int(state.get("failures_total", 0))

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch, from `batches_done` on."""
