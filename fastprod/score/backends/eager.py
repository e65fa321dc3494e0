"""The eager backend (seed section 5, multi-scale TTA and scoring: the reference every other backend is
checked against): the members' weights files copied as member-K.pt and rebuilt with `create_model`."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fastprod.config import ModelConfig
from fastprod.score.backends.base import Backend, Run, on_device
from fastprod.score.graph import DTYPES, ScoringModule, build_module, logit_adjustment
from fastprod.score.tta import Views


def export(module: ScoringModule, views: Views, out_dir: Path, *, checkpoints: list[Path], max_batch: int,
           device: str, precision: str, calibration: torch.Tensor | None) -> list[str]:
    for i, p in enumerate(checkpoints):
        shutil.copyfile(p, out_dir / f"member-{i}.pt")
    return [f"member-{i}.pt" for i in range(len(checkpoints))]


def load(engine_dir: Path, meta: dict, device: torch.device) -> Run:
    model_cfg = ModelConfig(**meta["model"])
    module = build_module(model_cfg, len(meta["class_ids"]), [engine_dir / a for a in meta["artifact"]],
                          DTYPES[meta["precision"]], key=f"engine {engine_dir}",
                          logit_offset=logit_adjustment(meta)).to(device)
    if device.type == "cpu" or model_cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return on_device(module, device)


EAGER = Backend("eager", precisions=("fp32", "bf16", "fp16"), cpu_precisions=("fp32", "bf16"), export=export,
                load=load)
