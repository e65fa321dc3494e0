"""Shared by the row-loss kernel tests (CPU, Triton interpreter, GPU): the cases, the float64 reference
comparison and the helpers to run a test file under TRITON_INTERPRET=1 (a helper module, not a test)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from fastprod.config import A_OFFICIAL, A_PAPER
from fastprod.kernels.reference import reference_loss
from fastprod.losses import logit_offset

ROOT = Path(__file__).resolve().parents[2]

# (rows, classes, smoothing, alpha, beta, A, weighted, ignored rows, rows of weight 0); other weights are in (0, 2)
CASES = [
    (5, 1003, 0.0, 1.0, 0.0, A_OFFICIAL, False, [2], []),
    (4, 257, 0.1, 1.0, 0.0, A_OFFICIAL, True, [], [1]),
    (6, 999, 0.2, 0.5, 1.0, A_PAPER, True, [0, 5], [2, 5]),
    (3, 50030, 0.0, 6.0, 0.1, A_OFFICIAL, True, [1], [0]),
    (2, 100, 0.4, 0.1, 1.0, A_PAPER, True, [0, 1], []),
]
# a training-sized block: the 50,030-class head, SCE with label smoothing and O2U weights
REALISTIC = (64, 50030, 0.1, 1.0, 0.1, A_OFFICIAL, True, [5, 40], [7, 40])


def make_case(rows: int, classes: int, weighted: bool, ignored: list[int], seed: int = 0, zero_weight: list[int] = ()):
    g = torch.Generator().manual_seed(seed + classes)
    logits = torch.randn(rows, classes, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, classes, (rows,), generator=g)
    target[ignored] = -100
    weights = torch.rand(rows, generator=g, dtype=torch.float64) * 2 if weighted else None
    if weights is not None:
        weights[list(zero_weight)] = 0.0
    return logits, target, weights


def true_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log sum_k exp z_k - z_y per row in float64, whatever the row's weight; 0 on ignored rows."""
    z = logits.double()
    ce = torch.logsumexp(z, dim=1) - z.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(target != -100, ce, torch.zeros_like(ce))


def backpropagate(out, grad_output: float | None) -> None:
    """loss.backward(grad_output) (the loss alone, as a training step), or with None the gradient of
    loss + sum(per_sample * r), which exercises both outputs' backward."""
    if grad_output is not None:
        out.loss.backward(torch.tensor(grad_output, dtype=out.loss.dtype))
    else:
        r = torch.linspace(0.5, 1.5, len(out.per_sample), dtype=out.per_sample.dtype)
        (out.loss + (out.per_sample * r).sum()).backward()


def run_loss(fn, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
             grad_output: float | None = None, **kw):
    """Loss outputs and the logits' gradient (`backpropagate`)."""
    z = logits.clone().requires_grad_()
    out = fn(z, target, weights=weights, **kw)
    backpropagate(out, grad_output)
    return out, z.grad


def long_tail_offset(classes: int, tau: float, seed: int = 0) -> torch.Tensor | None:
    """The logit-adjustment offset tau * log(prior) (`fastprod.losses.logit_offset`) of a long-tailed training
    split: Zipf-like class sizes from 500 down to 1 in a random class order, every 97th class with no image."""
    g = torch.Generator().manual_seed(seed)
    counts = (500 * torch.arange(1, classes + 1, dtype=torch.float64) ** -0.8).ceil()[torch.randperm(classes, generator=g)]
    counts[::97] = 0
    return logit_offset(counts, tau)


def check_against_reference(fn, case, dtype: torch.dtype, tol: float, grad_output: float | None = None,
                            offset: torch.Tensor | None = None, **extra) -> None:
    """`fn` against the float64 reference; with a logit-adjustment `offset`, against its closed form: the plain
    formula on logits + offset for the loss and the gradient, the plain logits' CE for the recorded CE."""
    rows, classes, smoothing, alpha, beta, A, weighted, ignored, zero_weight = case
    logits, target, weights = make_case(rows, classes, weighted, ignored, zero_weight=zero_weight)
    kw = dict(smoothing=smoothing, alpha=alpha, beta=beta, A=A)
    adjusted = logits if offset is None else logits + offset.double()
    ref, ref_grad = run_loss(reference_loss, adjusted, target, weights, grad_output, **kw)
    if offset is not None:
        extra["logit_offset"] = offset
    out, grad = run_loss(fn, logits.to(dtype), target, None if weights is None else weights.to(dtype), grad_output,
                         **kw, **extra)
    pairs = [("loss", out.loss, ref.loss), ("per_sample", out.per_sample, ref.per_sample),
             ("true ce", out.ce, true_ce(logits, target)), ("grad", grad, ref_grad)]
    for name, a, b in pairs + ([("ce", out.ce, ref.ce)] if offset is None else []):
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=tol, msg=lambda m: f"{name} {case}: {m}")
    assert not out.ce.requires_grad
    silent = ignored + zero_weight  # rows that add nothing to the loss or the gradient
    assert torch.all(out.per_sample[silent] == 0) and torch.all(grad[silent] == 0)


def run_in_interpreter(test_file: str) -> str:
    """Run `test_file` as a script under TRITON_INTERPRET=1 (set before Triton is imported, and kept out of
    this process); returns its stdout after checking it exited cleanly."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, test_file], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def poison_allocations() -> None:
    """Make torch.empty / empty_like return NaN-filled float tensors, so an output element the kernel
    forgets to write shows up as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(math.nan) if t.is_floating_point() else t

    torch.empty = lambda *a, **k: nan(empty(*a, **k))
    torch.empty_like = lambda *a, **k: nan(empty_like(*a, **k))
