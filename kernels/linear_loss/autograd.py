"""`linear_cross_entropy`: the recipe's classifier head (features [B, D] -> 50,030 classes) and its loss
(CE with label smoothing, seed section 2; SCE with O2U per-sample weights, seed section 3) in one op that
never holds the [B, C] logits.

Forward: the backend gives the log-sum-exp per row; z_y = x . w_y + b_y and sum_k z_k = x . sum_k w_k + sum_k b_k
are cheap [B, D] products, so the per-sample loss follows (`fastprod.kernels.common`). Backward: the backend
recomputes the logits block by block and accumulates dX, dW and db.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from fastprod.kernels.common import grad_coefficients, inv_valid_count, row_losses, row_weights, safe_target
from fastprod.kernels.reference import LossOutput, LossParams, loss_params, reference_loss

LinearImpl = Literal["auto", "triton", "chunked", "reference"]


class LinearBackend(NamedTuple):
    lse: Callable[..., torch.Tensor]  # (x, w, b) -> [B] log-sum-exp of the logits
    grads: Callable[..., tuple]  # (x, w, b, target, lse, (s, t, u), needs) -> (dX, dW, db)


def linear_backend(impl: LinearImpl, device: torch.device) -> LinearBackend:
    """Triton tiles on CUDA (or on request), class-chunked torch otherwise."""
    if impl == "triton" or (impl == "auto" and device.type == "cuda"):
        from fastprod.kernels.linear_loss.triton import linear_grads_triton, linear_lse_triton

        return LinearBackend(linear_lse_triton, linear_grads_triton)
    from fastprod.kernels.linear_loss.chunked import linear_grads_torch, linear_lse_torch

    return LinearBackend(linear_lse_torch, linear_grads_torch)


class LinearLossFunction(torch.autograd.Function):
    """(features, weight, bias, target, weights) -> (loss, per_sample, ce); ce is not differentiable."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
                weights: torch.Tensor | None, p: LossParams, backend: LinearBackend):
        acc = torch.promote_types(x.dtype, torch.float32)
        y, wts, inv_n = safe_target(target, p), row_weights(target, weights, p, acc), inv_valid_count(target, p, acc)
        lse = backend.lse(x, w, b).to(acc)
        z_y = (x.to(acc) * w[y].to(acc)).sum(dim=1) + (b[y].to(acc) if b is not None else 0)
        sum_z = None
        if p.smoothing:
            sum_z = x.to(acc) @ w.sum(dim=0, dtype=acc) + (b.sum(dtype=acc) if b is not None else 0)
        per_sample, ce = row_losses(lse, z_y, sum_z, wts, target, w.shape[0], p)
        ctx.save_for_backward(x, w, b, y, wts, lse, ce, inv_n)
        ctx.params, ctx.backend = p, backend
        ctx.mark_non_differentiable(ce)
        return per_sample.sum() * inv_n, per_sample, ce

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, grad_per_sample: torch.Tensor | None, _grad_ce: torch.Tensor | None):
        x, w, b, y, wts, lse, ce, inv_n = ctx.saved_tensors
        row_scale = grad_loss * inv_n if grad_per_sample is None else grad_loss * inv_n + grad_per_sample
        coefs = grad_coefficients(ce, wts, row_scale.to(lse.dtype), w.shape[0], ctx.params)
        dx, dw, db = ctx.backend.grads(x, w, b, y, lse, coefs, tuple(ctx.needs_input_grad[:3]))
        return dx, dw, db, None, None, None, None


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor, *, weights: torch.Tensor | None = None,
                         params: LossParams | None = None, impl: LinearImpl = "auto", **terms: float) -> LossOutput:
    """`reference_loss(F.linear(features, weight, bias), target, ...)` without the [B, C] logits, for `params`
    or the LossParams of the keyword `terms` (smoothing, alpha, beta, A, ignore_index): Triton on CUDA,
    class-chunked torch elsewhere; impl="reference" runs exactly that naive expression."""
    p = loss_params(params, terms)
    if impl == "reference":
        return reference_loss(F.linear(features, weight, bias), target, weights=weights, params=p)
    if features.dtype != weight.dtype:
        raise ValueError(f"features ({features.dtype}) and weight ({weight.dtype}) must share a dtype")
    loss, per_sample, ce = LinearLossFunction.apply(features, weight, bias, target, weights, p,
                                                    linear_backend(impl, features.device))
    return LossOutput(loss, per_sample, ce)
