"""The interface every export backend implements (seed section 5, multi-scale TTA and scoring: how the
scoring graph is stored and run), and the helpers several backends share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fastprod.score.tta import Views

Run = Callable[[torch.Tensor], torch.Tensor]  # uint8 [N, 3, S, S] views on the CPU -> float [N, C] probabilities


@dataclass(frozen=True)
class Backend:
    """One way to store a `ScoringModule` in an engine directory and to run it again.

    export(module, views, out_dir, *, checkpoints, max_batch, device, precision, calibration) -> artifact
        writes the backend's files into `out_dir` (the engine being built) and returns their name(s), which
        engine.json records as "artifact". `module` is built in `precision`'s dtype (fp32 for int8);
        `checkpoints` are the members' weights files; int8 gets `calibration`, uint8 views of real images.
    load(engine_dir, meta, device) -> Run
        the callable scoring runs: CPU uint8 views in (it moves them to `device` if it runs there),
        probabilities out. `meta` is engine.json.
    """

    name: str
    precisions: tuple[str, ...]  # the --precision values it exports
    cpu_precisions: tuple[str, ...]  # those it exports with --device cpu
    export: Callable[..., str | list[str]]
    load: Callable[[Path, dict, torch.device], Run]
    why: str = ""  # why it lacks precisions that others export (said when one is asked for)


def example(views: Views, batch: int, device: str = "cpu") -> torch.Tensor:
    """A random uint8 batch of `views` (what an exporter traces with)."""
    return torch.randint(0, 256, (batch, 3, views.image_size, views.image_size), dtype=torch.uint8, device=device)


def batch_dim(max_batch: int) -> torch.export.Dim:
    """The dynamic batch dimension of an exported graph: 1 to `max_batch` views."""
    return torch.export.Dim("batch", min=1, max=max_batch)


def on_device(run: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Run:
    """`run` fed with CPU views: each batch is moved to `device` first."""
    return lambda x: run(x.to(device, non_blocking=True))

