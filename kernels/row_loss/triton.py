"""The fused row-wise loss as a Triton kernel (recipe: CE and label smoothing, seed section 2;
SCE and O2U per-sample weights, seed section 3; in one pass).

One program per row. Pass 1 streams the row once for the online log-sum-exp, the sum of logits
(label smoothing) and z_y, and writes the weighted per-sample loss and the unweighted CE. Pass 2
(only when a gradient is wanted) streams it again and writes d(mean loss)/dz, which may overwrite the
logits themselves (Liger-style in-place backward). Logits may be fp32/bf16/fp16; math is in fp32.
The algebra is `fastprod.kernels.common`'s. With a logit-adjustment offset o (HAS_OFFSET), both passes work
on z + o, and pass 1 also keeps the plain row's online log-sum-exp for the CE that O2U records.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastprod.kernels.reference import LossParams

MAX_BLOCK = 8192


@triton.jit
def row_loss_kernel(logits_ptr, logits_stride, grad_ptr, grad_stride, target_ptr, weights_ptr, offset_ptr, inv_n_ptr,
                    loss_ptr, ce_ptr, n_classes, ignore_index, smoothing, alpha, rce_scale,
                    HAS_WEIGHTS: tl.constexpr, HAS_OFFSET: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    z_row = logits_ptr + row * logits_stride
    g_row = grad_ptr + row * grad_stride
    y = tl.load(target_ptr + row)
    if y == ignore_index:
        tl.store(loss_ptr + row, 0.0)
        tl.store(ce_ptr + row, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, n_classes, BLOCK):
                cols = start + offs
                tl.store(g_row + cols, tl.zeros([BLOCK], dtype=grad_ptr.dtype.element_ty), mask=cols < n_classes)
        return
    m = float("-inf")
    d = 0.0
    m_plain = float("-inf")
    d_plain = 0.0
    sum_z = 0.0
    for start in range(0, n_classes, BLOCK):
        cols = start + offs
        mask = cols < n_classes
        z = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        if HAS_OFFSET:
            m_new = tl.maximum(m_plain, tl.max(z, 0))
            d_plain = d_plain * tl.exp(m_plain - m_new) + tl.sum(tl.exp(z - m_new), 0)
            m_plain = m_new
            z += tl.load(offset_ptr + cols, mask=mask, other=0.0)
        m_new = tl.maximum(m, tl.max(z, 0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
        sum_z += tl.sum(tl.where(mask, z, 0.0), 0)
    lse = m + tl.log(d)
    z_y = tl.load(z_row + y).to(tl.float32)
    if HAS_OFFSET:
        plain_ce = m_plain + tl.log(d_plain) - z_y
        ce = lse - z_y - tl.load(offset_ptr + y)
    else:
        ce = lse - z_y
        plain_ce = ce
    p_y = tl.exp(-ce)
    if HAS_WEIGHTS:
        w = tl.load(weights_ptr + row).to(tl.float32)
    else:
        w = 1.0
    smoothed = (1.0 - smoothing) * ce - smoothing * (sum_z / n_classes - lse)
    tl.store(loss_ptr + row, w * (alpha * smoothed + rce_scale * (1.0 - p_y)))
    tl.store(ce_ptr + row, plain_ce)
    if COMPUTE_GRAD:
        ws = w * tl.load(inv_n_ptr)
        c_rce = rce_scale * p_y
        s = ws * (alpha + c_rce)
        t = ws * (alpha * (1.0 - smoothing) + c_rce)
        u = ws * alpha * smoothing / n_classes
        for start in range(0, n_classes, BLOCK):
            cols = start + offs
            mask = cols < n_classes
            z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_OFFSET:
                z += tl.load(offset_ptr + cols, mask=mask, other=0.0)
            g = s * tl.exp(z - lse) - u - tl.where(cols == y, t, 0.0)
            tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)


def launch_config(n_classes: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a row of n_classes."""
    block = min(triton.next_power_of_2(n_classes), MAX_BLOCK)
    return block, max(1, min(16, block // 512))


def row_loss_triton(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                    offset: torch.Tensor | None, inv_n: torch.Tensor, p: LossParams,
                    grad_out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `fastprod.kernels.row_loss.chunked.row_loss_torch`; per-sample outputs are float32."""
    n_rows, n_classes = logits.shape
    if logits.stride(1) != 1 or (grad_out is not None and grad_out.stride(1) != 1):
        raise ValueError("row_loss_triton needs logits (and grad_out) with contiguous rows")
    per_sample = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    ce = torch.empty_like(per_sample)
    grad = logits if grad_out is None else grad_out
    block, num_warps = launch_config(n_classes)
    row_loss_kernel[(n_rows,)](
        logits, logits.stride(0), grad, grad.stride(0), target, logits if weights is None else weights,
        inv_n if offset is None else offset.to(torch.float32).contiguous(), inv_n, per_sample, ce, n_classes,
        p.ignore_index, p.smoothing, p.alpha, p.rce_scale, HAS_WEIGHTS=weights is not None,
        HAS_OFFSET=offset is not None, COMPUTE_GRAD=grad_out is not None, BLOCK=block, num_warps=num_warps)
    return per_sample, ce
