"""The scoring graph every engine holds (seed section 5, multi-scale TTA and scoring): uint8 TTA views in,
float32 class probabilities out, with normalisation, the network(s), the softmax and, for a snapshot
ensemble, the mean over members inside it; with post-hoc logit adjustment (Menon et al., ICLR 2021), each
member's logits minus tau * log(training prior) before its softmax (`export --logit-adjust TAU`). The backends (fastprod/score/backends/) export it;
`build_module` rebuilds it from weights files (the eager backend's load)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from fastprod.config import ModelConfig
from fastprod.data.augment import MEAN, STD
from fastprod.losses import prior
from fastprod.models import create_model, load_weights

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ScoringModule(torch.nn.Module):
    """uint8 [N, 3, S, S] -> mean over members of softmax(member(normalise(x)) - logit_offset), float32 [N, C]."""

    def __init__(self, members: list[torch.nn.Module], dtype: torch.dtype = torch.float32,
                 logit_offset: torch.Tensor | None = None) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255), persistent=False)
        self.register_buffer("logit_offset", logit_offset, persistent=False)  # None: no adjustment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float() - self.mean) * self.inv_std).to(self.dtype)
        logits = [m(x).float() for m in self.members]
        if self.logit_offset is not None:
            logits = [z - self.logit_offset for z in logits]
        probs = [z.softmax(-1) for z in logits]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


def logit_adjustment(meta: dict) -> torch.Tensor | None:
    """The post-hoc offset tau * log(prior) an engine.json records (`logit_adjust`), or None."""
    adjust = meta.get("logit_adjust")
    return prior.logit_offset(torch.tensor(adjust["train_class_counts"]), adjust["tau"]) if adjust else None


def build_module(model_cfg: ModelConfig, num_classes: int, checkpoints: list[Path], dtype: torch.dtype,
                 key: str = "--checkpoint", logit_offset: torch.Tensor | None = None) -> ScoringModule:
    """The members' weights (read as plain tensors only; `key` names their source in errors) behind one module."""
    members = []
    for path in checkpoints:
        model = create_model(ModelConfig(**{**asdict(model_cfg), "pretrained_file": None, "init_from": None}), num_classes)
        load_weights(model, Path(path), key)
        members.append(model.eval())
    return ScoringModule(members, dtype, logit_offset).eval().to(dtype)
