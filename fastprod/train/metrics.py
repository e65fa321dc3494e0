"""Run metrics: one JSON line per step and per validation in `metrics.jsonl`, mirrored to TensorBoard.

Only the main rank writes. On resume, lines past the resumed step are dropped (the steps are
replayed) and TensorBoard purges them too, so a crashed-and-resumed run reads like a clean one; a last
line cut short by a kill mid-write is dropped with a warning.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from fastprod.files import write_text


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
