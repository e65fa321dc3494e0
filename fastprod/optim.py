"""`create_optimizer`: SGD with momentum and weight decay (seed sections 1-2).

Weight decay (3e-4 in the recipe) is applied to conv/linear weights only; norm layers and biases
(every parameter with fewer than two dimensions) are exempt unless `decay_norm_and_bias` is set.
On GPU the optimizer is apex's FusedSGD when apex is installed (the Dockerfile builds it), torch's
fused SGD otherwise; on CPU torch's foreach SGD. It is handed to DeepSpeed as a client optimizer,
which avoids compiling DeepSpeed's own optimizer ops.
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
    groups, kw = param_groups(model, cfg), dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if not next(model.parameters()).is_cuda:
        return torch.optim.SGD(groups, foreach=True, **kw)
    fused_sgd = apex_fused_sgd()
    if fused_sgd is not None:
        return fused_sgd(groups, **kw)
    return torch.optim.SGD(groups, fused=True, **kw)


def apex_fused_sgd() -> type[torch.optim.Optimizer] | None:
    """apex.optimizers.FusedSGD (weight decay before momentum, as torch's SGD) if apex is installed."""
    try:
        from apex.optimizers import FusedSGD
    except ImportError:
        return None
    return FusedSGD
