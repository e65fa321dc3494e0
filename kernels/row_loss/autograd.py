"""`fused_loss`: the recipe's training loss (CE with label smoothing, seed section 2; SCE with O2U per-sample
weights, seed section 3) as one fused row-wise pass with the gradient computed in the forward (Liger-style),
for logits already in memory.

The forward writes d(mean loss)/d logits into a buffer; the backward only scales it by the incoming
gradient, and not at all when that is the 1 of a plain `loss.backward()` on CPU (`common.scale_grad_`).
With `inplace_backward=True` that buffer is the logits tensor itself (no extra [B, C] memory): the
logits' storage is overwritten by their gradient during the forward, so the caller promises that nothing
reads the logits after this call (a training step that only backpropagates the loss). Their version
counter is bumped, so autograd raises if an earlier op saved them for its own backward. No gradient is
computed, and the logits are left alone, under `torch.no_grad()` or for logits that need none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from fastprod.kernels.common import inv_valid_count, mean_loss_grad_scale, scale_grad_
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
    """(logits, target, weights, offset) -> (loss, per_sample, ce); ce is not differentiable, weights and the
    offset get no gradient."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                offset: torch.Tensor | None, p: LossParams, inplace_backward: bool, backend: RowBackend,
                grad_enabled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        inv_n = inv_valid_count(target, p, logits.dtype)
        grad = None
        if grad_enabled and ctx.needs_input_grad[0]:
            grad = logits if inplace_backward else torch.empty_like(logits, memory_format=torch.contiguous_format)
        per_sample, ce = backend(logits, target, weights, offset, inv_n, p, grad)
        if inplace_backward and grad is not None:
            torch.autograd.graph.increment_version(logits)
        ctx.save_for_backward(grad, inv_n)
        ctx.mark_non_differentiable(ce)
        return per_sample.sum() * inv_n, per_sample, ce

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor | None, grad_per_sample: torch.Tensor | None, _grad_ce: None):
        grad, inv_n = ctx.saved_tensors
        scale = mean_loss_grad_scale(grad_loss, grad_per_sample, inv_n)
        return scale_grad_(grad, scale if scale.dim() == 0 else scale[:, None]), None, None, None, None, None, None, None


def fused_loss(logits: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor | None = None,
               params: LossParams | None = None, logit_offset: torch.Tensor | None = None,
               inplace_backward: bool = False, impl: RowImpl = "auto", **terms: float) -> LossOutput:
    """`reference_loss` computed by one fused pass per row (Triton on CUDA, chunked torch elsewhere), for
    `params` or the LossParams of the keyword `terms` (smoothing, alpha, beta, A, ignore_index), on the logits
    plus `logit_offset` ([C], logit adjustment; None: no offset).

    inplace_backward=True overwrites `logits` with their gradient during the forward (no [B, C] gradient
    buffer): only for callers that never read the logits again (a training step that only backpropagates
    the loss)."""
    p = loss_params(params, terms)
    backend = row_backend(impl, logits.device)
    if logit_offset is not None:
        logit_offset = logit_offset.to(device=logits.device, dtype=torch.promote_types(logits.dtype, torch.float32))
    loss, per_sample, ce = RowLossFunction.apply(logits, target, weights, logit_offset, p, inplace_backward,
                                                 backend, torch.is_grad_enabled())
    return LossOutput(loss, per_sample, ce)
