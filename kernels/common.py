"""The per-row algebra shared by every fused path of the recipe's loss family (`reference.LossParams`): label
smoothing e (seed section 2), SCE's alpha, beta and A and the O2U per-sample weights w_i (seed section 3).

Each path reduces a row of logits z (C classes, target y) to three numbers: lse = log sum_k exp z_k,
z_y and sum_k z_k. From them, with ce = lse - z_y and p_y = exp(-ce):
    loss_i = w_i * (alpha * ((1 - e) ce - e (sum_z / C - lse)) + beta (-A) (1 - p_y))
and the gradient of loss_i times a row scale r_i (1 / N_valid for the mean loss) is
    dz_k = s_i p_k - t_i [k == y] - u_i,    p_k = exp(z_k - lse)
    s_i = r_i w_i (alpha + beta (-A) p_y),  t_i = r_i w_i (alpha (1 - e) + beta (-A) p_y),  u_i = r_i w_i alpha e / C
(the SCE gradient is the CE gradient scaled per row; label smoothing adds the uniform -alpha e / C).
Ignored rows have w_i = 0 here, so their loss and gradient are exactly zero. The per-sample CE that
O2U records is the true lse - z_y for every row that is not ignored, whatever its weight (a row of
weight 0 still has a CE, as in `reference_loss` and the Triton row kernel), and 0 for ignored rows.
"""

from __future__ import annotations

import torch

from fastprod.kernels.reference import LossParams


def row_weights(target: torch.Tensor, weights: torch.Tensor | None, p: LossParams, dtype: torch.dtype) -> torch.Tensor:
    """w_i as `dtype`, zero on ignored rows."""
    valid = target != p.ignore_index
    w = valid.to(dtype)
    return w * weights.to(dtype) if weights is not None else w


def safe_target(target: torch.Tensor, p: LossParams) -> torch.Tensor:
    """The target with ignored rows pointing at class 0 (their weight is zero)."""
    return torch.where(target != p.ignore_index, target, torch.zeros_like(target))


def inv_valid_count(target: torch.Tensor, p: LossParams, dtype: torch.dtype) -> torch.Tensor:
    """1 / N_valid as a 0-d tensor (no host sync) in float32 or wider; 1 when every row is ignored."""
    return 1.0 / (target != p.ignore_index).sum().clamp(min=1).to(torch.promote_types(dtype, torch.float32))


def row_losses(lse: torch.Tensor, z_y: torch.Tensor, sum_z: torch.Tensor | None, w: torch.Tensor,
               target: torch.Tensor, n_classes: int, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted per-sample loss, unweighted unsmoothed CE): both zero on ignored rows; on the others the
    loss is scaled by w (zero for weight 0) and the CE is the true CE whatever the weight."""
    ce = lse - z_y
    loss = (1 - p.smoothing) * ce - p.smoothing * (sum_z / n_classes - lse) if p.smoothing else ce
    loss = p.alpha * loss + p.rce_scale * (1 - torch.exp(-ce))
    valid = target != p.ignore_index
    zero = torch.zeros((), dtype=ce.dtype, device=ce.device)
    return torch.where(valid, loss * w, zero), torch.where(valid, ce, zero)


def grad_coefficients(ce: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor, n_classes: int,
                      p: LossParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, t, u) of dz_k = s p_k - t [k == y] - u, for per-row loss gradients scaled by `row_scale`."""
    ws = w * row_scale
    c_rce = p.rce_scale * torch.exp(-ce)
    return ws * (p.alpha + c_rce), ws * (p.alpha * (1 - p.smoothing) + c_rce), ws * (p.alpha * p.smoothing / n_classes)


def grad_from_logits_(z: torch.Tensor, lse: torch.Tensor, target: torch.Tensor, coefs: tuple[torch.Tensor, ...],
                      col_start: int = 0) -> torch.Tensor:
    """Turn a chunk of logits z [R, Cc] (classes col_start..col_start+Cc) into its gradient, in place."""
    s, t, u = coefs
    z.sub_(lse[:, None]).exp_().mul_(s[:, None]).sub_(u[:, None])
    local = target - col_start
    rows = torch.nonzero((local >= 0) & (local < z.shape[1])).squeeze(1)
    z[rows, local[rows]] -= t[rows]
    return z
