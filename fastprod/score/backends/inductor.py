"""The inductor backend (seed section 5, multi-scale TTA and scoring: a compiled engine without a
runtime dependency): model.pt2, an AOTInductor package compiled ahead of time, so loading it compiles
nothing."""

from __future__ import annotations

from pathlib import Path

import torch

from fastprod.score.backends.base import Backend, Run, batch_dim, example, on_device
from fastprod.score.graph import ScoringModule
from fastprod.score.tta import Views


def export(module: ScoringModule, views: Views, out_dir: Path, *, checkpoints: list[Path], max_batch: int,
           device: str, precision: str, calibration: torch.Tensor | None) -> str:
    path = out_dir / "model.pt2"
    module = module.to(device)
    if device == "cpu":
        module = module.to(memory_format=torch.channels_last)
    with torch.no_grad():
        program = torch.export.export(module, (example(views, 2, device),),
                                      dynamic_shapes=({0: batch_dim(max_batch)},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path.name


def load(engine_dir: Path, meta: dict, device: torch.device) -> Run:
    return on_device(torch._inductor.aoti_load_package(str(engine_dir / meta["artifact"])), device)


INDUCTOR = Backend("inductor", precisions=("fp32", "bf16", "fp16"), cpu_precisions=("fp32", "bf16"), export=export,
                   load=load)
