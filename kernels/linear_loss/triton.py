"""The fused classifier head + loss as Triton kernels (GPU path; recipe: the 50,030-class head with label
smoothing, seed section 2, and SCE and O2U per-sample weights, seed section 3). Tiles of [BLOCK_B rows,
BLOCK_C classes] are computed with tl.dot and never stored: the forward writes each tile's row max and sum
of exponentials (combined on the host into the log-sum-exp), the backward recomputes the tile, turns it
into dz (`fastprod.kernels.common` algebra) and atomically adds its shares of dX, dW and db into float32
buffers (as Cut Cross-Entropy does), one chunk of classes per launch so the float32 buffer for dW never
spans the whole head. A logit-adjustment offset o (HAS_OFFSET, float32 [C]) is added to each tile; the forward
then also writes the plain tile's max and sum, for the plain CE that O2U records.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCKS = {"BLOCK_B": 64, "BLOCK_C": 128, "BLOCK_D": 64}
NUM_WARPS = 8
GRAD_CLASS_CHUNK = 8192  # classes per gradient launch: a float32 dW buffer of 8192 x D (64 MiB at D = 2048)


@triton.jit
def _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, n_rows, n_classes, dim, stride_x, stride_w,
                 HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                 INPUT_PRECISION: tl.constexpr):
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        xt = tl.load(x_ptr + rows[:, None] * stride_x + ds[None, :],
                     mask=(rows[:, None] < n_rows) & (ds[None, :] < dim), other=0.0)
        wt = tl.load(w_ptr + cols[:, None] * stride_w + ds[None, :],
                     mask=(cols[:, None] < n_classes) & (ds[None, :] < dim), other=0.0)
        acc = tl.dot(xt, tl.trans(wt), acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < n_classes, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def linear_lse_kernel(x_ptr, w_ptr, b_ptr, o_ptr, m_ptr, s_ptr, m_plain_ptr, s_plain_ptr, n_rows, n_classes, dim,
                      stride_x, stride_w, HAS_BIAS: tl.constexpr, HAS_OFFSET: tl.constexpr, BLOCK_B: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    z = _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, n_rows, n_classes, dim, stride_x, stride_w,
                     HAS_BIAS, BLOCK_B, BLOCK_C, BLOCK_D, INPUT_PRECISION)
    z = tl.where(cols[None, :] < n_classes, z, float("-inf"))
    out = tl.program_id(1) * n_rows + rows
    if HAS_OFFSET:
        m = tl.max(z, 1)
        tl.store(m_plain_ptr + out, m, mask=rows < n_rows)
        tl.store(s_plain_ptr + out, tl.sum(tl.exp(z - m[:, None]), 1), mask=rows < n_rows)
        z += tl.load(o_ptr + cols, mask=cols < n_classes, other=0.0)[None, :]
    m = tl.max(z, 1)
    s = tl.sum(tl.exp(z - m[:, None]), 1)
    tl.store(m_ptr + out, m, mask=rows < n_rows)
    tl.store(s_ptr + out, s, mask=rows < n_rows)


@triton.jit
def linear_grad_kernel(x_ptr, w_ptr, b_ptr, o_ptr, target_ptr, lse_ptr, s_ptr, t_ptr, u_ptr, dx_ptr, dw_ptr,
                       db_ptr, n_rows, n_classes, dim, stride_x, stride_w,
                       HAS_BIAS: tl.constexpr, HAS_OFFSET: tl.constexpr, COMPUTE_DX: tl.constexpr,
                       COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr, BLOCK_B: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < n_rows
    cmask = cols < n_classes
    z = _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, n_rows, n_classes, dim, stride_x, stride_w,
                     HAS_BIAS, BLOCK_B, BLOCK_C, BLOCK_D, INPUT_PRECISION)
    if HAS_OFFSET:
        z += tl.load(o_ptr + cols, mask=cmask, other=0.0)[None, :]
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    s = tl.load(s_ptr + rows, mask=rmask, other=0.0)
    t = tl.load(t_ptr + rows, mask=rmask, other=0.0)
    u = tl.load(u_ptr + rows, mask=rmask, other=0.0)
    y = tl.load(target_ptr + rows, mask=rmask, other=-1)
    g = s[:, None] * tl.exp(z - lse[:, None]) - u[:, None] - tl.where(cols[None, :] == y[:, None], t[:, None], 0.0)
    g = tl.where(rmask[:, None] & cmask[None, :], g, 0.0)
    if COMPUTE_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(g, 0), mask=cmask)
    gc = g.to(x_ptr.dtype.element_ty)
    for d0 in range(0, dim, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < dim
        if COMPUTE_DX:
            wt = tl.load(w_ptr + cols[:, None] * stride_w + ds[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
            tl.atomic_add(dx_ptr + rows[:, None] * dim + ds[None, :], tl.dot(gc, wt, input_precision=INPUT_PRECISION),
                          mask=rmask[:, None] & dmask[None, :])
        if COMPUTE_DW:
            xt = tl.load(x_ptr + rows[:, None] * stride_x + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
            tl.atomic_add(dw_ptr + cols[:, None] * dim + ds[None, :],
                          tl.dot(tl.trans(gc), xt, input_precision=INPUT_PRECISION),
                          mask=cmask[:, None] & dmask[None, :])


def _launch_args(x: torch.Tensor, w: torch.Tensor, blocks: dict[str, int]) -> tuple[tuple[int, int], dict]:
    if x.stride(1) != 1 or w.stride(1) != 1:
        raise ValueError("the Triton linear loss needs features and weight with contiguous rows")
    grid = (triton.cdiv(x.shape[0], blocks["BLOCK_B"]), triton.cdiv(w.shape[0], blocks["BLOCK_C"]))
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    return grid, dict(blocks, INPUT_PRECISION=precision, num_warps=NUM_WARPS)


def linear_lse_triton(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, offset: torch.Tensor | None,
                      blocks: dict[str, int] = BLOCKS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log sum_k exp(x w_k + b_k + o_k), log sum_k exp(x w_k + b_k) or None without an offset) per row, float32."""
    grid, meta = _launch_args(x, w, blocks)
    m, s = (torch.empty((grid[1], x.shape[0]), dtype=torch.float32, device=x.device) for _ in range(2))
    m_plain, s_plain = (m, s) if offset is None else (torch.empty_like(m), torch.empty_like(s))
    linear_lse_kernel[grid](x, w, w if b is None else b, m if offset is None else offset, m, s, m_plain, s_plain,
                            x.shape[0], w.shape[0], x.shape[1], x.stride(0), w.stride(0), HAS_BIAS=b is not None,
                            HAS_OFFSET=offset is not None, **meta)
    lse_plain = None if offset is None else torch.logsumexp(m_plain + torch.log(s_plain), dim=0)
    return torch.logsumexp(m + torch.log(s), dim=0), lse_plain


def linear_grads_triton(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, offset: torch.Tensor | None,
                        target: torch.Tensor, lse: torch.Tensor, coefs: tuple[torch.Tensor, ...], needs: tuple[bool, bool, bool],
                        blocks: dict[str, int] = BLOCKS, class_chunk: int = GRAD_CLASS_CHUNK,
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dX, dW, db) for dz = s p - t [k == y] - u, returned in the inputs' dtypes.

    One launch per `class_chunk` classes: its shares of dW and db are accumulated in float32 buffers of
    that many rows (not of all C), then cast into dW and db; dX accumulates in float32 across launches."""
    want_db = needs[2] and b is not None
    n_classes = w.shape[0]
    chunk = min(class_chunk, n_classes)
    dx = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if needs[0] else None
    dw = torch.empty_like(w) if needs[1] else None
    db = torch.empty_like(b) if want_db else None
    dw_acc = torch.empty((chunk, w.shape[1]), dtype=torch.float32, device=x.device) if needs[1] else None
    db_acc = torch.empty(chunk, dtype=torch.float32, device=x.device) if want_db else None
    s, t, u = (c.to(torch.float32).contiguous() for c in coefs)
    lse = lse.to(torch.float32)
    for c0 in range(0, n_classes, chunk):
        c1 = min(c0 + chunk, n_classes)
        wc, bc = w[c0:c1], (b[c0:c1] if b is not None else w)
        dw_c = dw_acc[: c1 - c0].zero_() if dw is not None else lse
        db_c = db_acc[: c1 - c0].zero_() if db is not None else lse
        grid, meta = _launch_args(x, wc, blocks)
        oc = offset[c0:c1] if offset is not None else lse
        linear_grad_kernel[grid](x, wc, bc, oc, target - c0, lse, s, t, u, lse if dx is None else dx, dw_c, db_c,
                                 x.shape[0], c1 - c0, x.shape[1], x.stride(0), w.stride(0), HAS_BIAS=b is not None,
                                 HAS_OFFSET=offset is not None, COMPUTE_DX=needs[0], COMPUTE_DW=needs[1],
                                 COMPUTE_DB=want_db, **meta)
        if dw is not None:
            dw[c0:c1].copy_(dw_c)
        if db is not None:
            db[c0:c1].copy_(db_c)
    return (dx.to(x.dtype) if dx is not None else None), dw, db
