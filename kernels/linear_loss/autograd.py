"""`linear_cross_entropy`: the recipe's classifier head (features [B, D] -> 50,030 classes) and its loss
(CE with label smoothing, seed section 2; SCE with O2U per-sample weights, seed section 3) in one op that
never holds the [B, C] logits.

Forward: the backend's `loss` gives the per-sample loss, the CE and the log-sum-exp per row. The CPU path
(chunked.py) also computes the gradient of the mean loss there, block by block (Liger-style), so that its
backward only scales it by the incoming gradient, and not at all when that is the 1 of a plain
`loss.backward()` (`common.scale_grad_`); that gradient serves one backward of the loss alone. The Triton
path (and any other backward: through `per_sample`, or a second one) has the backend's `grads` recompute the
logits tile by tile and accumulate dX, dW and db. Without a gradient (`torch.no_grad()`, or inputs that need
none) the forward computes the loss alone. A logit-adjustment offset o ([C]) is added to every row of logits
on every path (a bias that gets no gradient), except for the plain CE that O2U records (`reference.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from fastprod.kernels.common import (grad_coefficients, inv_valid_count, mean_loss_grad_scale, plain_ce,
                                     row_losses, row_weights, safe_target, scale_grad_)
from fastprod.kernels.reference import LossOutput, LossParams, loss_params, reference_loss

LinearImpl = Literal["auto", "triton", "chunked", "reference"]


class LinearBackend(NamedTuple):
    # (x, w, b, offset, target, y, wts, inv_n, params, needs)
    #   -> (per_sample, recorded CE, the loss's CE, lse, (dX, dW, db) of the mean loss or None)
    loss: Callable[..., tuple]
    grads: Callable[..., tuple]  # (x, w, b, offset, y, lse, (s, t, u), needs) -> (dX, dW, db)


def loss_from_lse(lse_fn: Callable[..., tuple], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                  offset: torch.Tensor | None, target: torch.Tensor, y: torch.Tensor, wts: torch.Tensor,
                  inv_n: torch.Tensor, p: LossParams, needs: tuple[bool, bool, bool]) -> tuple:
    """A backend's `loss` from its log-sum-exp `lse_fn(x, w, b, offset)` -> (lse of z + offset, lse of z or None):
    z_y = x . w_y + b_y + o_y and sum_k z_k = x . sum_k w_k + sum_k (b_k + o_k) are cheap [B, D] products; the
    gradient is left to `grads`."""
    acc = inv_n.dtype
    lse, lse_plain = (None if t is None else t.to(acc) for t in lse_fn(x, w, b, offset))
    bias = b if offset is None else offset if b is None else b.to(acc) + offset
    z_y = (x.to(acc) * w[y].to(acc)).sum(dim=1) + (bias[y].to(acc) if bias is not None else 0)
    sum_z = None
    if p.smoothing:
        sum_z = x.to(acc) @ w.sum(dim=0, dtype=acc) + (bias.sum(dtype=acc) if bias is not None else 0)
    per_sample, ce = row_losses(lse, z_y, sum_z, wts, target, w.shape[0], p)
    recorded = ce if offset is None else plain_ce(lse_plain, z_y, offset, y, target, p)
    return per_sample, recorded, ce, lse, None


def linear_backend(impl: LinearImpl, device: torch.device) -> LinearBackend:
    """Triton tiles on CUDA (or on request), row-chunked torch otherwise."""
    if impl == "triton" or (impl == "auto" and device.type == "cuda"):
        from fastprod.kernels.linear_loss.triton import linear_grads_triton, linear_lse_triton

        return LinearBackend(partial(loss_from_lse, linear_lse_triton), linear_grads_triton)
    from fastprod.kernels.linear_loss.chunked import linear_grads_torch, linear_loss_torch

    return LinearBackend(linear_loss_torch, linear_grads_torch)


class LinearLossFunction(torch.autograd.Function):
    """(features, weight, bias, target, weights, offset) -> (loss, per_sample, ce); ce is not differentiable,
    weights and the offset (float32 or wider) get no gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
                weights: torch.Tensor | None, offset: torch.Tensor | None, p: LossParams, backend: LinearBackend,
                grad_enabled: bool):
        ctx.set_materialize_grads(False)
        acc = torch.promote_types(x.dtype, torch.float32)
        y, wts, inv_n = safe_target(target, p), row_weights(target, weights, p, acc), inv_valid_count(target, p, acc)
        needs = tuple(grad_enabled and need for need in ctx.needs_input_grad[:3])
        per_sample, recorded, ce, lse, ctx.grads = backend.loss(x, w, b, offset, target, y, wts, inv_n, p, needs)
        ctx.save_for_backward(x, w, b, offset, y, wts, lse, ce, inv_n)
        ctx.params, ctx.backend = p, backend
        ctx.mark_non_differentiable(recorded)
        return per_sample.sum() * inv_n, per_sample, recorded

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor | None, grad_per_sample: torch.Tensor | None, _grad_ce: None):
        x, w, b, offset, y, wts, lse, ce, inv_n = ctx.saved_tensors
        scale = mean_loss_grad_scale(grad_loss, grad_per_sample, inv_n)
        grads, ctx.grads = ctx.grads, None  # used once, then released
        if grads is not None and scale.dim() == 0:  # the forward's gradient of the mean loss: scaled in place
            dx, dw, db = (None if g is None else scale_grad_(g, scale) for g in grads)
        else:
            coefs = grad_coefficients(ce, wts, (scale * inv_n).to(lse.dtype), w.shape[0], ctx.params)
            dx, dw, db = ctx.backend.grads(x, w, b, offset, y, lse, coefs, tuple(ctx.needs_input_grad[:3]))
        return dx, dw, db, None, None, None, None, None, None


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor, *, weights: torch.Tensor | None = None,
                         params: LossParams | None = None, logit_offset: torch.Tensor | None = None,
                         impl: LinearImpl = "auto", **terms: float) -> LossOutput:
    """`reference_loss(F.linear(features, weight, bias), target, ...)` without the [B, C] logits, for `params`
    or the LossParams of the keyword `terms` (smoothing, alpha, beta, A, ignore_index) and the logit-adjustment
    `logit_offset` ([C]; None: no offset): Triton on CUDA, row-chunked torch elsewhere; impl="reference" runs
    exactly that naive expression."""
    p = loss_params(params, terms)
    if impl == "reference":
        return reference_loss(F.linear(features, weight, bias), target, weights=weights, params=p,
                              logit_offset=logit_offset)
    if features.dtype != weight.dtype:
        raise ValueError(f"features ({features.dtype}) and weight ({weight.dtype}) must share a dtype")
    if logit_offset is not None:
        acc = torch.promote_types(features.dtype, torch.float32)
        logit_offset = logit_offset.to(device=features.device, dtype=acc).contiguous()
    loss, per_sample, ce = LinearLossFunction.apply(features, weight, bias, target, weights, logit_offset, p,
                                                    linear_backend(impl, features.device), torch.is_grad_enabled())
    return LossOutput(loss, per_sample, ce)
