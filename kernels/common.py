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

Logit adjustment (`reference.py`): with a per-class offset o, everything above holds for the row z + o (its
gradient is that of z, o being a constant); only the CE that O2U records is of the plain z, lse(z) - z_y,
one more log-sum-exp per row (`plain_ce`).
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


def plain_ce(lse_plain: torch.Tensor, z_y: torch.Tensor, offset: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor, p: LossParams) -> torch.Tensor:
    """The CE O2U records under a logit offset: lse(z) - z_y of the plain logits, from z_y of z + offset (y: the
    safe target); 0 on ignored rows."""
    ce = lse_plain - (z_y - offset[y])
    return torch.where(target != p.ignore_index, ce, torch.zeros((), dtype=ce.dtype, device=ce.device))


def grad_coefficients(ce: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor, n_classes: int,
                      p: LossParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, t, u) of dz_k = s p_k - t [k == y] - u, for per-row loss gradients scaled by `row_scale`."""
    ws = w * row_scale
    c_rce = p.rce_scale * torch.exp(-ce)
    return ws * (p.alpha + c_rce), ws * (p.alpha * (1 - p.smoothing) + c_rce), ws * (p.alpha * p.smoothing / n_classes)


def grad_from_logits_(z: torch.Tensor, lse: torch.Tensor, target: torch.Tensor,
                      coefs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Turn a block of rows of logits z [R, C] into their gradient, in place."""
    s, t, u = coefs
    z.sub_(lse[:, None]).exp_().mul_(s[:, None]).sub_(u[:, None])
    return z.scatter_add_(1, target[:, None], -t[:, None])


def rows_loss_(z: torch.Tensor, target: torch.Tensor, y: torch.Tensor, w: torch.Tensor, row_scale: torch.Tensor,
               p: LossParams, grad: bool, offset: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weighted per-sample loss, the CE O2U records, the loss's CE, lse) of a block of rows of logits z [R, C]
    (target, its safe version y and weights w of those rows) plus the per-class `offset` (logit adjustment;
    None: none), in a few in-place passes over z, which it overwrites: with `grad`, z ends as the gradient of
    sum_i row_scale_i loss_i (row_scale 0-d or [R]). The CE and lse are of z + offset, the recorded CE of z."""
    n_classes = z.shape[1]
    lse_plain = None
    if offset is not None:
        lse_plain = torch.logsumexp(z, dim=1)
        z.add_(offset)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    sum_z = z.sum(dim=1) if p.smoothing else None
    m = z.amax(dim=1, keepdim=True)
    d = z.sub_(m).exp_().sum(dim=1)
    lse = m.squeeze(1) + d.log()
    per_sample, ce = row_losses(lse, z_y, sum_z, w, target, n_classes, p)
    if grad:
        s, t, u = grad_coefficients(ce, w, row_scale, n_classes, p)
        z.mul_((s / d)[:, None]).sub_(u[:, None]).scatter_add_(1, y[:, None], -t[:, None])
    recorded = ce if offset is None else plain_ce(lse_plain, z_y, offset, y, target, p)
    return per_sample, recorded, ce, lse


def mean_loss_grad_scale(grad_loss: torch.Tensor | None, grad_per_sample: torch.Tensor | None,
                         inv_n: torch.Tensor) -> torch.Tensor:
    """The factor on d(mean loss)/d input when the outputs (loss, per_sample) get the gradients (grad_loss,
    grad_per_sample), None where an output was not used: grad_loss itself (0-d) when per_sample was not used,
    one factor per row otherwise."""
    if grad_per_sample is None:
        return grad_loss
    per_row = grad_per_sample / inv_n
    return per_row if grad_loss is None else grad_loss + per_row


def scale_grad_(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """grad *= scale in place: the backward of a loss whose gradient the forward computed (Liger-style).

    Skipped when scale is the 0-d 1 of a plain `loss.backward()`, checked on CPU only: there the multiply is
    a full pass over the buffer ([B, C] or the head's [C, D]) and `.item()` is free; on GPU the check would be a
    host sync that stalls the launch queue, while the multiply takes microseconds at its bandwidth."""
    if scale.dim() == 0 and scale.device.type == "cpu" and scale.item() == 1:
        return grad
    return grad.mul_(scale.to(grad.dtype))
