"""The fused CPU ensemble kernel against float64 numpy: the weighted sum, its float16 copy, the top-k
order (ties: lower class first), missing rows, and float16 conversion of every bit pattern."""

from __future__ import annotations

import numpy as np
import pytest

from fastprod.score.weighted_topk import BLOCK, GROUP, storage_view, weighted_topk

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles


def run(probs: np.ndarray, w: np.ndarray, k: int, rows: int = 3, write: bool = True):
    M, N, C = probs.shape
    top_v = np.empty((N, k), np.float32)
    top_i = np.empty((N, k), np.int32)
    out = np.empty((N if write else 0, C), np.uint16)
    weighted_topk(tuple(storage_view(p) for p in probs), w.astype(np.float32), rows, top_v, top_i, out)
    return top_v, top_i, out.view(np.float16)


def reference(probs: np.ndarray, w: np.ndarray, k: int):
    total = np.einsum("mnc,mc->nc", probs.astype(np.float64), w.astype(np.float64))
    order = np.argsort(-total, axis=1, kind="stable")[:, :k]
    return total, order


@pytest.mark.parametrize("M", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_sum_and_topk_match_float64(M, dtype):
    rng = np.random.default_rng(M)
    N, C, k = 13, 2 * BLOCK + GROUP + 7, 5  # a partial block and a partial group
    x = rng.gamma(0.3, size=(M, N, C))
    probs = (x / x.sum(-1, keepdims=True)).astype(dtype)
    w = rng.random((M, C))
    top_v, top_i, out = run(probs, w, k)
    total, order = reference(probs, w.astype(np.float32), k)
    np.testing.assert_array_equal(top_i, order)
    np.testing.assert_allclose(top_v, np.take_along_axis(total, order, 1), rtol=1e-6)
    np.testing.assert_allclose(out.astype(np.float64), total, rtol=1e-3, atol=1e-7)
    if M == 1:  # one float32 product, then float16 rounding (to nearest even), as numpy does it
        np.testing.assert_array_equal(out, (w.astype(np.float32) * probs.astype(np.float32))[0].astype(np.float16))


def test_ties_take_the_lower_class_and_k_may_exceed_a_group():
    C = 3 * GROUP
    probs = np.zeros((2, 4, C), np.float16)
    probs[:, 0, [5, 300, 7, 200]] = 0.25  # equal sums: the classes come out in ascending order
    probs[0, 1] = np.linspace(0, 1, C)  # increasing: every group beats the last threshold
    probs[:, 2, :] = 1 / C  # all equal
    w = np.ones((2, C))
    k = GROUP + 3
    top_v, top_i, _ = run(probs, w, k, rows=2, write=False)
    _, order = reference(probs, w, k)
    np.testing.assert_array_equal(top_i, order)
    assert top_i[0, :4].tolist() == [5, 7, 200, 300]
    assert top_i[2].tolist() == list(range(k))


def test_rows_with_nan_or_inf_are_missing_and_others_are_not():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 6, 500)).astype(np.float16)
    probs[1, 2, 17] = np.nan  # one value of one model
    probs[2, 4, 499] = np.inf
    probs[0, 5, :] = np.nan  # a whole row (an image the scorer could not decode)
    top_v, top_i, _ = run(probs, np.full((3, 500), 1 / 3), k=4, rows=4)
    missing = ~np.isfinite(top_v).all(1)
    assert missing.tolist() == [False, False, True, False, True, True]
    assert (top_i[missing] == -1).all()
    _, order = reference(probs[:, ~missing], np.full((3, 500), 1 / 3, np.float32), 4)
    np.testing.assert_array_equal(top_i[~missing], order)


def test_every_float16_bit_pattern_converts_exactly():
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(1, 64, 1024)  # subnormals, inf, NaN, signed zeros
    halves = bits.view(np.float16)
    _, _, out = run(halves, np.ones((1, 1024)), k=1, rows=64)
    finite = np.isfinite(halves[0])
    np.testing.assert_array_equal(out.view(np.uint16)[finite], bits[0][finite])  # x * 1 round-trips exactly
    np.testing.assert_array_equal(np.isnan(out), np.isnan(halves[0]))
    np.testing.assert_array_equal(out[np.isinf(halves[0])], halves[0][np.isinf(halves[0])])


def test_storage_view_refuses_other_dtypes():
    with pytest.raises(TypeError, match="float16 or float32"):
        storage_view(np.zeros((2, 2), np.float64))
