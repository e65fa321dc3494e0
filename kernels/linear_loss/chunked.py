"""The CPU path of the fused classifier head + loss (recipe: the 50,030-class head with label smoothing, seed
section 2, and SCE and O2U per-sample weights, seed section 3), in torch, one block of rows at a time: the
[B, C] logits never exist, only a [rows, C] block.

Liger-Kernel style: when a gradient is wanted, the forward turns each block's logits into their gradient in
place (`common.rows_loss_`) and adds its shares of dX, dW and db at once, so the matmul FLOPs are naive's
(logits, dX, dW: 3 B C D) and the backward only scales. Without a gradient the forward only computes the loss.
`linear_grads_torch` recomputes the blocks, for a backward the stored gradient does not serve.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fastprod.kernels.common import grad_from_logits_, rows_loss_
from fastprod.kernels.reference import LossParams

BLOCK_ELEMENTS = 1 << 23  # a [rows, C] float32 block of at most 32 MiB (B = 256, C = 50,030: two of 128 rows, 24 MiB)

Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def row_chunk(n_rows: int, n_classes: int) -> int:
    """Rows per block: the rows split evenly into the fewest blocks of at most BLOCK_ELEMENTS (at least one row)."""
    n_blocks = -(-n_rows * n_classes // BLOCK_ELEMENTS)
    return max(1, -(-n_rows // max(n_blocks, 1)))


def _row_blocks(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                acc: torch.dtype) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, their logits x w^T + b as `acc`) for each block of rows, all computed into one buffer: a block
    is overwritten by the next, so it must be used up before asking for that one."""
    step = row_chunk(x.shape[0], w.shape[0])
    buffer = torch.empty((step, w.shape[0]), dtype=x.dtype, device=x.device)
    for r0 in range(0, x.shape[0], step):
        rows = slice(r0, r0 + step)
        z = buffer[: x[rows].shape[0]]
        if b is None:
            torch.mm(x[rows], w.T, out=z)
        else:
            torch.addmm(b, x[rows], w.T, out=z)
        yield rows, z.to(acc)


class GradAccumulator:
    """dX, dW and db (each only where `needs` says so) from the gradient of the logits, a block of rows at a
    time: dX rows written once, dW and db summed over the blocks in the accumulation dtype."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, needs: tuple[bool, bool, bool]):
        self.x, self.w, self.b = x, w, b
        self.dx = torch.empty_like(x, memory_format=torch.contiguous_format) if needs[0] else None
        self.want_dw, self.want_db = needs[1], needs[2] and b is not None
        self.dw = self.db = None

    def add(self, rows: slice, g: torch.Tensor) -> None:
        if self.want_db:
            self.db = g.sum(dim=0) if self.db is None else self.db.add_(g.sum(dim=0))
        if self.want_dw:
            x = self.x[rows].to(g.dtype)
            self.dw = torch.mm(g.T, x) if self.dw is None else self.dw.addmm_(g.T, x)
        if self.dx is not None:
            torch.mm(g.to(self.x.dtype), self.w, out=self.dx[rows])

    def result(self) -> Grads:
        return (self.dx, None if self.dw is None else self.dw.to(self.w.dtype),
                None if self.db is None else self.db.to(self.b.dtype))


def linear_loss_torch(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, offset: torch.Tensor | None,
                      target: torch.Tensor, y: torch.Tensor, wts: torch.Tensor, inv_n: torch.Tensor, p: LossParams,
                      needs: tuple[bool, bool, bool]) -> tuple[torch.Tensor, ...]:
    """(weighted per-sample loss, recorded CE, the loss's CE, lse, (dX, dW, db) of the mean loss) for the logits
    x w^T + b (+ offset, logit adjustment; `common.rows_loss_`), target (y: its safe version) and row weights wts
    (`fastprod.kernels.common`); the gradients only where `needs` says so (none: the loss alone). Per-row
    outputs in float32 or wider."""
    acc = torch.promote_types(x.dtype, torch.float32)
    per_sample, recorded, ce, lse = (torch.empty(x.shape[0], dtype=acc, device=x.device) for _ in range(4))
    grads = GradAccumulator(x, w, b, needs)
    for rows, z in _row_blocks(x, w, b, acc):
        per_sample[rows], recorded[rows], ce[rows], lse[rows] = rows_loss_(z, target[rows], y[rows], wts[rows], inv_n,
                                                                         p, any(needs), offset)
        if any(needs):
            grads.add(rows, z)
    return per_sample, recorded, ce, lse, grads.result()


def linear_grads_torch(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, offset: torch.Tensor | None,
                       target: torch.Tensor, lse: torch.Tensor, coefs: tuple[torch.Tensor, ...],
                       needs: tuple[bool, bool, bool]) -> Grads:
    """(dX, dW, db) for dz = s p - t [k == y] - u (`fastprod.kernels.common`; p of the logits + offset), each
    only where `needs` says so, from recomputed blocks of logits."""
    grads = GradAccumulator(x, w, b, needs)
    for rows, z in _row_blocks(x, w, b, lse.dtype):
        if offset is not None:
            z.add_(offset)
        grads.add(rows, grad_from_logits_(z, lse[rows], target[rows], tuple(c[rows] for c in coefs)))
    return grads.result()
