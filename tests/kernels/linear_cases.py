"""Shared by the fused linear-head kernel tests (CPU, Triton interpreter, GPU): the cases and the float64
comparison against the naive F.linear + reference loss (a helper module, not a test)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from fastprod.config import A_OFFICIAL, A_PAPER
from fastprod.kernels import linear_cross_entropy
from fastprod.kernels.reference import reference_loss
from row_cases import backpropagate, true_ce

# (rows, dim, classes, bias, smoothing, alpha, beta, A, weighted, ignored rows, rows of weight 0);
# other weights are in (0, 2)
CASES = [
    (9, 24, 9001, True, 0.0, 1.0, 0.0, A_OFFICIAL, False, [4], []),
    (7, 17, 333, False, 0.1, 1.0, 0.0, A_OFFICIAL, True, [], [0, 6]),
    (13, 40, 4097, True, 0.2, 0.5, 1.0, A_PAPER, True, [0, 12], [5, 12]),
    (3, 8, 50030, True, 0.0, 6.0, 0.1, A_OFFICIAL, True, [1], [2]),
]
# a training-sized block: the 50,030-class head, SCE with label smoothing and O2U weights
REALISTIC = (64, 128, 50030, True, 0.1, 1.0, 0.1, A_OFFICIAL, True, [5, 40], [7, 40])


def make_case(rows: int, dim: int, classes: int, bias: bool, weighted: bool, ignored: list[int], seed: int = 0,
              zero_weight: list[int] = ()):
    g = torch.Generator().manual_seed(seed + classes)
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    w = torch.randn(classes, dim, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(classes, generator=g, dtype=torch.float64) if bias else None
    target = torch.randint(0, classes, (rows,), generator=g)
    target[ignored] = -100
    weights = torch.rand(rows, generator=g, dtype=torch.float64) * 2 if weighted else None
    if weights is not None:
        weights[list(zero_weight)] = 0.0
    return (x, w, b), target, weights


def run_linear(fn, params, target, weights, dtype, needs=(True, True, True), grad_output: float | None = None, **kw):
    """Outputs and the gradients (features, weight, bias) (`row_cases.backpropagate`)."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_(need) for t, need in zip(params, needs)]
    out = fn(*leaves, target, weights=None if weights is None else weights.to(dtype), **kw)
    backpropagate(out, grad_output)
    return out, [None if t is None else t.grad for t in leaves]


def adjusted_reference(x, w, b, target, *, logit_offset: torch.Tensor, **kw):
    """The closed form of logit adjustment: the plain formula on x w^T + b + offset."""
    return reference_loss(F.linear(x, w, b) + logit_offset.to(x.dtype), target, **kw)


def check_against_reference(fn, case, dtype: torch.dtype, tol: float, needs=(True, True, True),
                            grad_output: float | None = None, offset: torch.Tensor | None = None) -> None:
    """`fn` against the naive float64 expression; with a logit-adjustment `offset`, against its closed form (the
    plain formula on the logits + offset; the recorded CE of the plain logits)."""
    rows, dim, classes, bias, smoothing, alpha, beta, A, weighted, ignored, zero_weight = case
    params, target, weights = make_case(rows, dim, classes, bias, weighted, ignored, zero_weight=zero_weight)
    x, w, b = params
    logits = x @ w.T + (b if b is not None else 0)
    kw = dict(smoothing=smoothing, alpha=alpha, beta=beta, A=A)
    naive = partial(linear_cross_entropy, impl="reference")
    if offset is not None:
        naive, kw["logit_offset"] = adjusted_reference, offset
    ref, ref_grads = run_linear(naive, params, target, weights, torch.float64, grad_output=grad_output, **kw)
    out, grads = run_linear(fn, params, target, weights, dtype, needs, grad_output, **kw)
    pairs = [("loss", out.loss, ref.loss), ("per_sample", out.per_sample, ref.per_sample),
             ("true ce", out.ce, true_ce(logits, target))] + ([("ce", out.ce, ref.ce)] if offset is None else [])
    pairs += [(name, g, r) for name, g, r, need in zip(("dX", "dW", "db"), grads, ref_grads, needs) if need and r is not None]
    for name, a, b in pairs:
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=tol, msg=lambda m: f"{name} {case}: {m}")
    for g, need in zip(grads, needs):
        assert need or g is None
    assert not out.ce.requires_grad and torch.all(out.per_sample[ignored + zero_weight] == 0)
    if needs[0]:  # rows that add nothing to the loss get no feature gradient
        assert torch.all(grads[0][ignored + zero_weight] == 0)
