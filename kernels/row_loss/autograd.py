"""`fused_loss`: the recipe's training loss (CE with label smoothing, seed section 2; SCE with O2U per-sample
weights, seed section 3) as one fused row-wise pass with the gradient computed in the forward (Liger-style),
for logits already in memory.

The forward writes d(mean loss)/d logits into a buffer; the backward only scales it by the incoming
gradient. With `inplace_backward=True` that buffer is the logits tensor itself (no extra [B, C]
memory): the caller promises not to read the logits after this call. Their version counter is bumped,
so autograd raises if an earlier op saved them for its own backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from fastprod.kernels.common import inv_valid_count
from fastprod.kernels.reference import LossOutput, LossParams, loss_params

RowImpl = Literal["auto", "triton", "torch"]
RowBackend = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def row_backend(impl: RowImpl, device: torch.device) -> RowBackend:
    """The Triton kernel for CUDA tensors (or on request), the chunked torch path otherwise."""
    if impl == "triton" or (impl == "auto" and device.type == "cuda"):
        from fastprod.kernels.row_loss.triton import row_loss_triton

        return row_loss_triton
    from fastprod.kernels.row_loss.chunked import row_loss_torch

    return row_loss_torch


class RowLossFunction(torch.autograd.Function):
    """(logits, target, weights) -> (loss, per_sample, ce); ce is not differentiable, weights get no gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, p: LossParams,
                inplace_backward: bool, backend: RowBackend) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inv_n = inv_valid_count(target, p, logits.dtype)
        grad = None
        if ctx.needs_input_grad[0]:
            grad = logits if inplace_backward else torch.empty_like(logits, memory_format=torch.contiguous_format)
        per_sample, ce = backend(logits, target, weights, inv_n, p, grad)
        if inplace_backward and grad is not None:
            torch.autograd.graph.increment_version(logits)
        ctx.save_for_backward(grad, inv_n)
        ctx.mark_non_differentiable(ce)
        return per_sample.sum() * inv_n, per_sample, ce

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, grad_per_sample: torch.Tensor | None, _grad_ce: torch.Tensor | None):
        grad, inv_n = ctx.saved_tensors
        scale = grad_loss if grad_per_sample is None else (grad_loss + grad_per_sample / inv_n)[:, None]
        return grad.mul_(scale.to(grad.dtype)), None, None, None, None, None


def fused_loss(logits: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor | None = None,
               params: LossParams | None = None, inplace_backward: bool = False, impl: RowImpl = "auto",
               **terms: float) -> LossOutput:
    """`reference_loss` computed by one fused pass per row (Triton on CUDA, chunked torch elsewhere), for
    `params` or the LossParams of the keyword `terms` (smoothing, alpha, beta, A, ignore_index).

    inplace_backward=True overwrites `logits` with their gradient during the forward: only for callers
    that never read the logits again (a training step that only backpropagates the loss)."""
    p = loss_params(params, terms)
    backend = row_backend(impl, logits.device)
    loss, per_sample, ce = RowLossFunction.apply(logits, target, weights, p, inplace_backward, backend)
    return LossOutput(loss, per_sample, ce)
