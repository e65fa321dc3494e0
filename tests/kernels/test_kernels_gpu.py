"""The Triton loss kernels run natively on a CUDA GPU against the float64 reference (fp32 and bf16).
On CPU-only machines these skip: there the same kernels are checked under TRITON_INTERPRET=1 and
compiled for sm_80/sm_90 (tests/kernels/test_kernels_row_loss.py, test_kernels_linear_loss.py)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import linear_cases as linear
import row_cases as row
from fastprod.kernels import fused_loss, linear_cross_entropy
from fastprod.kernels.reference import LossOutput

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU CI runs these kernels in the Triton interpreter)")]


def on_cuda(fn):
    """fn computed on the GPU for CPU tensors, differentiably (inputs moved there, outputs back)."""
    def wrapped(*tensors, weights=None, **kw):
        moved = [t.cuda() if isinstance(t, torch.Tensor) else t for t in tensors]
        out = fn(*moved, weights=None if weights is None else weights.cuda(), **kw)
        return LossOutput(out.loss.cpu(), out.per_sample.cpu(), out.ce.cpu())
    return wrapped


@pytest.mark.parametrize("tau", [0.0, 1.5])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("case", row.CASES, ids=lambda c: f"B{c[0]}-C{c[1]}")
def test_row_loss_triton_on_gpu(case, dtype, tol, tau):
    """tau > 0: logit adjustment, against its float64 closed form (`row_cases.check_against_reference`)."""
    row.check_against_reference(on_cuda(partial(fused_loss, impl="triton")), case, dtype, tol,
                                offset=row.long_tail_offset(case[1], tau))


@pytest.mark.parametrize("tau", [0.0, 1.5])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-3), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("case", linear.CASES, ids=lambda c: f"B{c[0]}-D{c[1]}-C{c[2]}")
def test_linear_loss_triton_on_gpu(case, dtype, tol, tau):
    linear.check_against_reference(on_cuda(partial(linear_cross_entropy, impl="triton")), case, dtype, tol,
                                   offset=row.long_tail_offset(case[2], tau))
