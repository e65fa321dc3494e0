"""The CPU path of the fused row-wise loss (recipe: label smoothing, seed section 2;
SCE and O2U per-sample weights, seed section 3; in one pass).

The same algebra as the Triton kernel, in torch, a block of rows at a time, so that at most one
float32 block of rows exists beside the logits (and none when the gradient overwrites float32 logits).
"""

from __future__ import annotations

import torch

from fastprod.kernels.common import row_weights, rows_loss_, safe_target
from fastprod.kernels.reference import LossParams

CHUNK_ELEMENTS = 1 << 21  # rows per block: about 8 MiB of float32 logits


def row_loss_torch(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                   offset: torch.Tensor | None, inv_n: torch.Tensor, p: LossParams,
                   grad_out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weighted loss of logits + offset ([C] logit adjustment, or None) and the unweighted CE of the
    logits (accumulation dtype: float32 or wider); when grad_out is given, writes d(mean loss)/d logits into it
    (it may be `logits` itself)."""
    n_rows, n_classes = logits.shape
    acc = torch.promote_types(logits.dtype, torch.float32)
    offset = None if offset is None else offset.to(acc)
    w, y = row_weights(target, weights, p, acc), safe_target(target, p)
    per_sample = torch.empty(n_rows, dtype=acc, device=logits.device)
    ce = torch.empty_like(per_sample)
    in_place = grad_out is not None and grad_out.data_ptr() == logits.data_ptr() and logits.dtype == acc
    step = max(1, CHUNK_ELEMENTS // max(n_classes, 1))
    for r0 in range(0, n_rows, step):
        rows = slice(r0, r0 + step)
        z = logits[rows] if in_place else logits[rows].to(acc, copy=True)
        per_sample[rows], ce[rows], _, _ = rows_loss_(z, target[rows], y[rows], w[rows], inv_n, p,
                                                      grad_out is not None, offset)
        if grad_out is not None and not in_place:
            grad_out[rows].copy_(z)
    return per_sample, ce
