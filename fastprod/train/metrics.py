"""Run metrics: one JSON line per log step (`run.log_every_steps`) and per validation in `metrics.jsonl`,
mirrored to TensorBoard.

`StepMeter` collects what happens between two log steps without waiting on the host: losses are summed on the
device and read once per log step. Only the main rank writes. On resume, lines past the resumed step are dropped (the steps are
replayed) and TensorBoard purges them too, so a crashed-and-resumed run reads like a clean one; a last
line cut short by a kill mid-write is dropped with a warning.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from fastprod.files import write_text


class StepMeter:
    """Steps, images, step and data-wait seconds and the (device-side) loss sum since the last read, and the
    run's training totals (images over step time, validation and checkpoints excluded)."""

    def __init__(self) -> None:
        self.total_images, self.total_seconds = 0, 0.0
        self._reset()

    def _reset(self) -> None:
        self.steps, self.finite, self.images, self.seconds, self.data_wait = 0, 0, 0, 0.0, 0.0
        self.loss_sum: torch.Tensor | float = 0.0

    def add(self, loss: torch.Tensor | None, images: int, data_wait: float, seconds: float) -> None:
        """One step; `loss` None when it was skipped (not finite)."""
        self.steps += 1
        self.images += images
        self.seconds += seconds
        self.data_wait += data_wait
        self.total_images += images
        self.total_seconds += seconds
        if loss is not None:
            self.finite += 1
            self.loss_sum = self.loss_sum + loss.detach().float()

    def read(self) -> dict:
        """Mean loss, img/s, data-wait share and skipped steps since the last read (one host sync), and reset."""
        values = {"loss": float(self.loss_sum) / self.finite if self.finite else float("nan"),
                  "img_per_s": self.images / max(self.seconds, 1e-9),
                  "data_wait": self.data_wait / max(self.seconds, 1e-9), "skipped": self.steps - self.finite}
        self._reset()
        return values

    @property
    def img_per_s(self) -> float:
        """Training images per second of step time over the whole run (this process)."""
        return self.total_images / max(self.total_seconds, 1e-9)


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        if not enabled:
            return
        if self.path.exists():
            kept = [ln for ln in _records(self.path) if ln[1] <= resume_step]
            write_text(self.path, "".join(text + "\n" for text, _ in kept))
        self.file = open(self.path, "a")
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, kind: str, step: int, **values: float) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        self.file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def _records(path: Path) -> list[tuple[str, int]]:
    """(line, step) of every complete record; a line that does not parse (cut short by a kill) is dropped."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            records.append((line, int(json.loads(line)["step"])))
        except (ValueError, KeyError, TypeError):
            if line.strip():
                warnings.warn(f"{path}:{number}: dropping an incomplete line ({line[:60]!r})")
    return records
