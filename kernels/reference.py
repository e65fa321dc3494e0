"""The recipe's loss family written from the formulas, in plain torch: the reference every fused path is tested
against, and `LossParams`, the one definition of its numbers that every path reads.

Per sample i with logits z, target y, p = softmax(z), C classes:
    CE                 = -log p_y
    label smoothing e  = -(1 - e) log p_y - (e / C) sum_k log p_k           (torch's definition; seed section 2)
    RCE (Wang et al.)  = -sum_k p_k log q_k with the one-hot q clamped so log 0 -> A  =  -A (1 - p_y)
    SCE                = alpha * CE_e + beta * RCE                        (CE_e: CE with smoothing e; seed section 3)
A is negative (`fastprod.config.A_OFFICIAL`, the official code's ln(1e-4) = -9.21, is the default; the paper's
text uses `A_PAPER` = -4). The weighted per-sample loss is w_i * loss_i with the O2U per-sample weights w
(seed section 3); the reduced loss is its mean over non-ignored samples (O2U weights have mean 1, so the
effective LR does not drift).

Logit adjustment (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment"): with a per-class
offset o = tau * log(prior) ([C], `fastprod.losses.logit_offset`), every term above is computed on z + o
instead of z: CE, label smoothing and the RCE of SCE alike (the paper defines only the CE form; adjusting
the RCE's p_y too keeps the SCE gradient the CE gradient scaled per row). Balanced softmax (Ren et al.,
NeurIPS 2020) is the same offset with tau = 1. The per-sample CE returned for O2U stays the CE of the plain
logits z: O2U ranks samples by how badly the model fits their label, and the adjusted CE adds -tau log prior_y
to every sample of a rare class, which would mark tail samples noisy for being rare, not for being wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastprod.config import A_OFFICIAL


@dataclass(frozen=True)
class LossParams:
    """alpha * CE_smoothing + beta * RCE with RCE = -A (1 - p_y); alpha=1, beta=0 is plain (smoothed) CE.

    A training run builds one from its `LossConfig` through its loss definition (`fastprod.losses`); the
    reference and every fused path take their per-row coefficients from it."""

    smoothing: float = 0.0
    alpha: float = 1.0
    beta: float = 0.0
    A: float = A_OFFICIAL
    ignore_index: int = -100

    @property
    def rce_scale(self) -> float:
        """beta * (-A): the RCE term is rce_scale * (1 - p_y)."""
        return self.beta * -self.A


def loss_params(params: LossParams | None, terms: dict[str, float]) -> LossParams:
    """`params`, or the LossParams of the keyword `terms` (smoothing, alpha, beta, A, ignore_index); not both."""
    if params is None:
        return LossParams(**terms)
    if terms:
        raise TypeError(f"give params or the terms {sorted(terms)}, not both")
    return params


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: mean of the weighted per-sample losses over non-ignored samples
    per_sample: torch.Tensor  # [B] weighted per-sample loss (0 where ignored)
    ce: torch.Tensor  # [B] unweighted, unsmoothed CE of the plain logits, detached (O2U scoring; 0 where ignored)


def reference_loss(logits: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor | None = None,
                   params: LossParams | None = None, logit_offset: torch.Tensor | None = None,
                   **terms: float) -> LossOutput:
    """alpha * CE_smoothing + beta * RCE, weighted per sample (O2U), for `params` or the LossParams of `terms`,
    on the logits plus `logit_offset` ([C], logit adjustment; None: no offset)."""
    p = loss_params(params, terms)
    valid = target != p.ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp = F.log_softmax(z, dim=-1)
    ce = -logp.gather(1, safe_target[:, None]).squeeze(1)
    if logit_offset is not None:
        logp = F.log_softmax(z + logit_offset.to(device=z.device, dtype=z.dtype), dim=-1)
    logp_y = logp.gather(1, safe_target[:, None]).squeeze(1)
    loss = -logp_y
    if p.smoothing:
        loss = (1 - p.smoothing) * loss - p.smoothing * logp.mean(dim=-1)
    loss = p.alpha * loss
    if p.beta:
        loss = loss + p.beta * (-p.A) * (1 - logp_y.exp())
    if weights is not None:
        loss = loss * weights.to(loss.dtype)
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    loss = torch.where(valid, loss, zero)
    return LossOutput(loss.sum() / valid.sum().clamp(min=1), loss, torch.where(valid, ce, zero).detach())
