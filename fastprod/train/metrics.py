"""Run metrics: one JSON line per step and per validation in `metrics.jsonl`, mirrored to TensorBoard.

Only the main rank writes. On resume, lines past the resumed step are dropped (the steps are
replayed) and TensorBoard purges them too, so a crashed-and-resumed run reads like a clean one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        if not enabled:
            return
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
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
