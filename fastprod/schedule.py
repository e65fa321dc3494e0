"""SGDR: cosine annealing with warm restarts, stepped per iteration (seed section 1).

The first cycle lasts `cycle_epochs` epochs of iterations and each restart multiplies the length
by `cycle_mult`, so with (1, 2) cycles end after epochs 1, 3, 7, 15, ... A snapshot is saved at
every cycle end (the snapshot-ensemble members). The learning rate is a pure function of the
global step, so resuming needs nothing but the step counter.
"""

from __future__ import annotations

import math

from fastprod.config import ScheduleConfig


class SGDR:
    def __init__(self, cfg: ScheduleConfig, base_lr: float, iters_per_epoch: int) -> None:
        self.base_lr, self.lr_min = base_lr, cfg.lr_min
        self.t0, self.mult = cfg.cycle_epochs * iters_per_epoch, cfg.cycle_mult

    def _position(self, step: int) -> tuple[int, int, int]:
        """(cycle index, step within the cycle, cycle length) for a global step."""
        cycle, start, length = 0, 0, self.t0
        while step >= start + length:
            start += length
            length *= self.mult
            cycle += 1
        return cycle, step - start, length

    def lr(self, step: int) -> float:
        """Learning rate for global optimizer step `step` (0-based)."""
        _, t, length = self._position(step)
        return self.lr_min + (self.base_lr - self.lr_min) * (1 + math.cos(math.pi * t / length)) / 2

    def cycle(self, step: int) -> int:
        return self._position(step)[0]

    def is_cycle_end(self, step: int) -> bool:
        """True when global step `step` (0-based) is the last iteration of its cycle."""
        _, t, length = self._position(step)
        return t == length - 1
