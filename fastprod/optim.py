"""`create_optimizer`: SGD with momentum and weight decay (seed sections 1-2).

Weight decay (3e-4 in the recipe) is applied to conv/linear weights only; norm layers and biases
(every parameter with fewer than two dimensions) are exempt unless `decay_norm_and_bias` is set.
A plain torch optimizer (foreach, or fused on GPU) is handed to DeepSpeed, which avoids compiling
DeepSpeed's own optimizer ops.
"""

from __future__ import annotations

import torch

from fastprod.config import OptimConfig


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 or cfg.decay_norm_and_bias else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def create_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    fused = next(model.parameters()).is_cuda
    return torch.optim.SGD(
        param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        foreach=not fused, fused=fused or None,
    )
