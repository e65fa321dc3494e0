"""The loss definitions, written from the formulas (the reference every faster path is tested against).

Per sample i with logits z, target y, p = softmax(z), C classes:
    CE                 = -log p_y
    label smoothing e  = -(1 - e) log p_y - (e / C) sum_k log p_k           (torch's definition)
    RCE (Wang et al.)  = -sum_k p_k log q_k with the one-hot q clamped so log 0 -> A  =  -A (1 - p_y)
    SCE                = alpha * CE_e + beta * RCE                        (CE_e: CE with smoothing e)
A is negative: the official code clamps labels to [1e-4, 1], giving A = ln(1e-4) = -9.21 (the default
here); the paper's text uses A = -4. The weighted per-sample loss is w_i * loss_i; the reduced loss
is its mean over non-ignored samples (O2U weights have mean 1, so the effective LR does not drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

A_OFFICIAL = math.log(1e-4)
A_PAPER = -4.0


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: mean of the weighted per-sample losses over non-ignored samples
    per_sample: torch.Tensor  # [B] weighted per-sample loss (0 where ignored)
    ce: torch.Tensor  # [B] unweighted, unsmoothed cross entropy, detached (O2U scoring; 0 where ignored)


def reference_loss(
    logits: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor | None = None, smoothing: float = 0.0,
    alpha: float = 1.0, beta: float = 0.0, A: float = A_OFFICIAL, ignore_index: int = -100,
) -> LossOutput:
    """alpha * CE_smoothing + beta * RCE, weighted per sample. alpha=1, beta=0 is plain (smoothed) CE."""
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    logp_y = logp.gather(1, safe_target[:, None]).squeeze(1)
    ce = -logp_y
    loss = (1 - smoothing) * ce - smoothing * logp.mean(dim=-1) if smoothing else ce
    loss = alpha * loss
    if beta:
        loss = loss + beta * (-A) * (1 - logp_y.exp())
    if weights is not None:
        loss = loss * weights.to(loss.dtype)
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    loss = torch.where(valid, loss, zero)
    return LossOutput(loss.sum() / valid.sum().clamp(min=1), loss, torch.where(valid, ce, zero).detach())
