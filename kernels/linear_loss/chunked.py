"""The CPU path of the fused classifier head + loss (recipe: the 50,030-class head with label smoothing, seed
section 2, and SCE and O2U per-sample weights, seed section 3), in torch, one block of classes at a time: the
[B, C] logits never exist, only a [B, chunk] block. Forward: a running log-sum-exp over class blocks.
Backward: each block's logits are recomputed (as Cut Cross-Entropy does), turned into their gradient in
place, and give dW and db of that block directly and their share of dX.
"""

from __future__ import annotations

import torch

from fastprod.kernels.common import grad_from_logits_

BLOCK_ELEMENTS = 1 << 19  # a [B, chunk] float32 block of about 2 MiB (bench/kernels_cpu.py: 13x less than naive)


def class_chunk(n_rows: int) -> int:
    """Classes per block for `n_rows` rows."""
    return max(256, BLOCK_ELEMENTS // max(n_rows, 1))


def _block_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, c0: int, c1: int,
                  acc: torch.dtype) -> torch.Tensor:
    z = torch.mm(x, w[c0:c1].T) if b is None else torch.addmm(b[c0:c1], x, w[c0:c1].T)
    return z.to(acc)


def linear_lse_torch(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """log sum_k exp(x w_k + b_k) per row, in float32 or wider."""
    acc = torch.promote_types(x.dtype, torch.float32)
    lse = torch.full((x.shape[0],), float("-inf"), dtype=acc, device=x.device)
    chunk = class_chunk(x.shape[0])
    for c0 in range(0, w.shape[0], chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(_block_logits(x, w, b, c0, c0 + chunk, acc), dim=1))
    return lse


def linear_grads_torch(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
                       lse: torch.Tensor, coefs: tuple[torch.Tensor, ...], needs: tuple[bool, bool, bool],
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dX, dW, db) for dz = s p - t [k == y] - u (`fastprod.kernels.common`), each only where `needs` says so."""
    acc = lse.dtype
    dx = torch.zeros(x.shape, dtype=acc, device=x.device) if needs[0] else None
    dw = torch.empty_like(w) if needs[1] else None
    db = torch.empty_like(b) if needs[2] and b is not None else None
    chunk = class_chunk(x.shape[0])
    for c0 in range(0, w.shape[0], chunk):
        c1 = min(c0 + chunk, w.shape[0])
        g = grad_from_logits_(_block_logits(x, w, b, c0, c1, acc), lse, target, coefs, col_start=c0)
        if db is not None:
            db[c0:c1] = g.sum(dim=0)
        g = g.to(x.dtype)
        if dw is not None:
            torch.mm(g.T, x, out=dw[c0:c1])
        if dx is not None:
            dx.addmm_(g, w[c0:c1])
    return (dx.to(x.dtype) if dx is not None else None), dw, db
