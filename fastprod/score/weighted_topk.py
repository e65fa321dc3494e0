"""The CPU kernel of the class-based ensemble (seed section 6): sum_m w[m, c] * P_m[n, c] and its top-k
in one pass over the memory-mapped probability matrices.

Applying an ensemble of M models to N images over C = 50,030 classes reads M x N x C probabilities
once and does two flops per value, so it is bound by memory bandwidth only if nothing else touches
memory. This numba kernel therefore fuses everything per image row and column block of BLOCK
classes (an 8 KiB float32 accumulator that stays in L1):

    acc = w[0] * P_0          (float16 -> float32 in registers: vcvtph2ps on x86, with F16C)
    acc += w[m] * P_m         for m = 1 .. M-1
    per group of GROUP classes: count the values above the row's current k-th largest (NaN counts)
    only in a group with a count: insert its values into the row's sorted top-k (ties: lower class first)

Each step is a loop LLVM vectorises (the count as compare-and-add; a max reduction, or the count
fused into the last multiply-add, would not be, which costs ~30%). The threshold rises fast, so
only a few groups per row are ever scanned. A row with a non-finite value (an image a scorer could not decode) comes out
as NaN. Optionally the float32 sum is written back as float16 (`out`). Rows are split over numba's
threads in tiles of `rows` images (prange). float16 inputs are passed as their uint16 bit patterns
(numba has no CPU float16 type); float32 inputs are read as they are.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

BLOCK = 2048  # classes per column block (the accumulator: 8 KiB)
GROUP = 128  # classes per top-k filter group
FASTMATH = {"reassoc", "contract", "arcp"}  # no nnan/ninf: NaN must survive to mark a missing row


@intrinsic
def _half_bits_to_float(typingctx, bits):
    """uint16 float16 bit pattern -> float32 (LLVM fpext; F16C vcvtph2ps once vectorised)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _float_to_half_bits(typingctx, x):
    """float32 -> float16 bit pattern as uint16 (round to nearest even; F16C vcvtps2ph)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def _to_float(x):
    """The float32 value of one stored probability (overloaded per storage type below)."""


@overload(_to_float)
def _to_float_impl(x):
    if x == types.uint16:
        return lambda x: _half_bits_to_float(x)
    if x == types.float32:
        return lambda x: x
    return None


@njit(inline="always")
def _insert(values, indices, v, c) -> None:
    """Insert v (class c) into a descending top-k, after the values equal to it."""
    j = values.shape[0] - 1
    while j > 0 and values[j - 1] < v:
        values[j] = values[j - 1]
        indices[j] = indices[j - 1]
        j -= 1
    values[j] = v
    indices[j] = c


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def weighted_topk(probs, w, rows, top_v, top_i, out) -> None:
    """top_v/top_i [N, k] <- top-k of sum_m w[m] * probs[m] per row; out [N, C] (or [0, C]) <- the sum as float16.

    probs: a tuple of M [N, C] arrays (uint16 float16 bits, or float32); w: float32 [M, C].
    """
    M = len(probs)
    N, C = probs[0].shape
    k = top_v.shape[1]
    write = out.shape[0] > 0
    for t in prange((N + rows - 1) // rows):
        lo = t * rows
        hi = min(N, lo + rows)
        acc = np.zeros(BLOCK, np.float32)
        bad = np.zeros(hi - lo, np.bool_)
        top_v[lo:hi] = -np.inf
        top_i[lo:hi] = -1
        for c0 in range(0, C, BLOCK):
            c1 = min(C, c0 + BLOCK)
            for n in range(lo, hi):
                p = probs[0][n]
                for c in range(c0, c1):
                    acc[c - c0] = w[0, c] * _to_float(p[c])
                for m in range(1, M):
                    p = probs[m][n]
                    for c in range(c0, c1):
                        acc[c - c0] += w[m, c] * _to_float(p[c])
                values, indices = top_v[n], top_i[n]
                for g0 in range(c0, c1, GROUP):
                    g1 = min(c1, g0 + GROUP)
                    threshold = values[k - 1]
                    above = np.int32(0)
                    for c in range(g0 - c0, g1 - c0):
                        above += np.int32(not acc[c] <= threshold)
                    if above == 0:
                        continue
                    for c in range(g0, g1):
                        v = acc[c - c0]
                        if v != v or v == np.inf:
                            bad[n - lo] = True
                        elif v > values[k - 1]:
                            _insert(values, indices, v, c)
                if write:
                    for c in range(c0, c1):
                        out[n, c] = _float_to_half_bits(acc[c - c0])
        for n in range(lo, hi):
            if bad[n - lo]:
                top_v[n] = np.nan
                top_i[n] = -1


def storage_view(probs: np.ndarray) -> np.ndarray:
    """A [N, C] probability matrix as the kernel reads it: float16 as uint16 bits, float32 as is."""
    a = np.asarray(probs)
    if a.dtype == np.float16:
        return a.view(np.uint16)
    if a.dtype == np.float32:
        return a
    raise TypeError(f"probabilities must be float16 or float32, not {a.dtype}")
