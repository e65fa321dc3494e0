"""The result file every benchmark writes with `--json FILE`, which bench/report.py turns into the
markdown report and plots of `bench/run.sh`:

    {"bench": name, "title": ..., "hardware": ..., "baseline": what the ratios are against,
     "rows": [{column: value, ...}, ...], "plot": {"label": column, "value": column, "ylabel": ...}}
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def hardware() -> str:
    """The machine the figures were measured on, in words."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = platform.processor() or "CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def write_json(path: str | Path | None, bench: str, title: str, baseline: str, rows: list[dict],
               plot: dict | None = None) -> None:
    """Write the result file (nothing when path is None)."""
    if path is None:
        return
    result = {"bench": bench, "title": title, "hardware": hardware(), "baseline": baseline, "rows": rows,
              "plot": plot}
    Path(path).write_text(json.dumps(result, indent=2, default=float) + "\n")
