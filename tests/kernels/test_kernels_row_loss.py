"""The fused row-wise loss (kernels/row_loss) against the float64 reference: the chunked torch path
in this process, the Triton kernel under TRITON_INTERPRET=1 in a subprocess (this file run as a
script, so the interpreter never leaks into other test modules), and the kernel compiled for sm_80/90."""

from __future__ import annotations

import math
import os

import pytest
import torch

from fastprod.config import A_PAPER, LossConfig
from fastprod.kernels.reference import reference_loss
from fastprod.losses import create_loss
from row_cases import (CASES, REALISTIC, check_against_reference, long_tail_offset, make_case, poison_allocations,
                       run_in_interpreter, run_loss)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of a few rows in the chunked path (one row for C >= 2000), so every case spans several."""
    monkeypatch.setattr("fastprod.kernels.row_loss.chunked.CHUNK_ELEMENTS", 2000)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-C{c[1]}-e{c[2]}-b{c[4]}")
def test_torch_path_matches_reference_in_float64(case):
    from fastprod.kernels import fused_loss

    check_against_reference(fused_loss, case, torch.float64, 1e-10)


@pytest.mark.parametrize("inplace", [False, True])
def test_torch_path_bf16_logits(inplace):
    from fastprod.kernels import fused_loss

    check_against_reference(fused_loss, CASES[2], torch.bfloat16, 5e-2, inplace_backward=inplace)


def test_inplace_backward_reuses_the_logits_and_guards_saved_logits():
    from fastprod.kernels import fused_loss

    logits, target, weights = make_case(4, 33, True, [1])
    z = logits.clone().requires_grad_()
    ref_grad = torch.autograd.grad(reference_loss(z, target, weights=weights, beta=1.0).loss, z)[0]
    hidden = z * 1.0
    ptr = hidden.data_ptr()
    fused_loss(hidden, target, weights=weights, beta=1.0, inplace_backward=True).loss.backward()
    torch.testing.assert_close(z.grad, ref_grad)
    assert hidden.data_ptr() == ptr  # the logits now hold the gradient
    torch.testing.assert_close(hidden.detach(), ref_grad)
    saved = z.exp()  # exp saves its output for backward: overwriting it must be refused
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fused_loss(saved, target, inplace_backward=True).loss.backward()


@pytest.mark.parametrize("grad_output", [1.0, 0.3])
@pytest.mark.parametrize("inplace", [False, True])
def test_realistic_shape_matches_reference(inplace, grad_output):
    """A training-sized block (64 rows, 50,030 classes) backpropagated from the loss alone, as a training step
    does: the grad_output == 1 path (no multiply) and a scaled one, out of place and over the logits."""
    from fastprod.kernels import fused_loss

    check_against_reference(fused_loss, REALISTIC, torch.float64, 1e-10, grad_output, inplace_backward=inplace)


@pytest.mark.parametrize("inplace", [False, True])
def test_per_sample_alone_matches_reference(inplace):
    """Only per_sample backpropagated (the loss output unused): the stored gradient scaled per row."""
    from fastprod.kernels import fused_loss

    logits, target, weights = make_case(6, 999, True, [0], zero_weight=[2])
    r = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    grads = []
    for fn, kw in ((reference_loss, {}), (fused_loss, {"inplace_backward": inplace})):
        z = logits.clone().requires_grad_()
        (fn(z * 1.0, target, weights=weights, smoothing=0.1, beta=0.5, **kw).per_sample @ r).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_no_gradient_buffer_without_grad(requires_grad):
    """Logits that need no gradient, or any logits under torch.no_grad(), are left alone in place."""
    from fastprod.kernels import fused_loss

    logits, target, _ = make_case(3, 50, False, [])
    logits.requires_grad_(requires_grad)
    before = logits.detach().clone()
    with torch.no_grad():
        out = fused_loss(logits, target, inplace_backward=True)
    assert torch.equal(logits.detach(), before) and not out.loss.requires_grad


@pytest.mark.parametrize("name, smoothing", [("ce", 0.0), ("sce", 0.1)])
def test_create_loss_fused_matches_reference(name, smoothing):
    logits, target, weights = make_case(6, 77, True, [3])
    cfg = dict(name=name, label_smoothing=smoothing, sce_beta=1.0, sce_A=A_PAPER)
    ref, ref_grad = run_loss(create_loss(LossConfig(**cfg)), logits, target, weights)
    out, grad = run_loss(create_loss(LossConfig(**cfg, impl="fused")), logits, target, weights)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(grad, ref_grad)


def test_create_loss_inplace_backward_writes_the_gradient_over_the_logits():
    """create_loss(cfg, inplace_backward=True) (the trainer's call): the logits' storage ends holding their
    gradient, equal to the out-of-place path's and the float64 reference's; without it they are left alone."""
    logits, target, weights = make_case(*REALISTIC[:2], True, [5, 40], zero_weight=[7])
    cfg = LossConfig(name="sce", label_smoothing=0.1, sce_beta=0.1)
    ref, ref_grad = run_loss(create_loss(cfg), logits, target, weights, 1.0)
    fused = LossConfig(name="sce", label_smoothing=0.1, sce_beta=0.1, impl="fused")
    for inplace in (False, True):
        leaf = logits.clone().requires_grad_()
        hidden = leaf * 1.0  # a model's output: not a leaf
        out = create_loss(fused, inplace_backward=inplace)(hidden, target, weights=weights)
        out.loss.backward()
        torch.testing.assert_close(out.loss, ref.loss, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(leaf.grad, ref_grad, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(hidden.detach(), ref_grad if inplace else logits, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("tau", [1.0, 1.5])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-C{c[1]}-e{c[2]}-b{c[4]}")
def test_logit_adjusted_torch_path_matches_closed_form(case, tau):
    """Logit adjustment: loss and gradient of logits + tau log prior, the recorded CE of the plain logits."""
    from fastprod.kernels import fused_loss

    check_against_reference(fused_loss, case, torch.float64, 1e-10, offset=long_tail_offset(case[1], tau))


@pytest.mark.parametrize("tau", [1.0, 1.5])
@pytest.mark.parametrize("inplace", [False, True])
def test_logit_adjusted_realistic_shape(inplace, tau):
    """The training-sized block with a long-tailed prior (classes without images included), as the trainer
    calls it: backpropagated from the loss alone, out of place and over the logits."""
    from fastprod.kernels import fused_loss

    check_against_reference(fused_loss, REALISTIC, torch.float64, 1e-10, 1.0,
                            offset=long_tail_offset(REALISTIC[1], tau), inplace_backward=inplace)


def test_logit_adjusted_bf16_logits():
    from fastprod.kernels import fused_loss

    check_against_reference(fused_loss, CASES[2], torch.bfloat16, 5e-2, offset=long_tail_offset(CASES[2][1], 1.5),
                            inplace_backward=True)


@pytest.mark.e2e
def test_triton_kernel_in_the_interpreter():
    assert f"ok {2 * len(CASES) + 1} cases" in run_in_interpreter(__file__)


ROW_SIGNATURE = {
    "logits_ptr": "*{t}", "logits_stride": "i64", "grad_ptr": "*{t}", "grad_stride": "i64", "target_ptr": "*i64",
    "weights_ptr": "*fp32", "offset_ptr": "*fp32", "inv_n_ptr": "*fp32", "loss_ptr": "*fp32", "ce_ptr": "*fp32", "n_classes": "i32",
    "ignore_index": "i32", "smoothing": "fp32", "alpha": "fp32", "rce_scale": "fp32",
    "HAS_WEIGHTS": "constexpr", "HAS_OFFSET": "constexpr", "COMPUTE_GRAD": "constexpr", "BLOCK": "constexpr",
}


@pytest.mark.parametrize("capability", [80, 90])
@pytest.mark.parametrize("dtype, grad, offset", [("fp32", True, True), ("bf16", True, False), ("fp16", False, True)])
def test_triton_kernel_compiles_for_gpu(capability, dtype, grad, offset):
    from fastprod.kernels.gpu_compile import compile_for_gpu
    from fastprod.kernels.row_loss.triton import launch_config, row_loss_kernel

    block, num_warps = launch_config(50030)
    signature = {k: v.format(t=dtype) for k, v in ROW_SIGNATURE.items()}
    kernel = compile_for_gpu(row_loss_kernel, signature, dict(HAS_WEIGHTS=True, HAS_OFFSET=offset, COMPUTE_GRAD=grad,
                                                                    BLOCK=block),
                             capability, num_warps)
    assert kernel.asm["cubin"] and f".target sm_{capability}" in kernel.asm["ptx"]


def interpreter_main() -> None:
    """Run under TRITON_INTERPRET=1: every case through the Triton kernel in float32, on CPU tensors."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    poison_allocations()
    from fastprod.kernels import fused_loss

    for case in CASES:
        check_against_reference(lambda *a, **k: fused_loss(*a, impl="triton", **k), case, torch.float32, 2e-5)
        check_against_reference(lambda *a, **k: fused_loss(*a, impl="triton", **k), case, torch.float32, 2e-5,
                                offset=long_tail_offset(case[1], 1.5))
    # in place, and logits whose rows are strided (a view of a wider buffer), with a NaN-poisoned gradient
    logits, target, weights = make_case(4, 300, True, [3])
    wide = torch.full((4, 320), math.nan)
    z = wide[:, :300]
    z.copy_(logits)
    z.requires_grad_()
    logits.requires_grad_()
    ref_grad = torch.autograd.grad(reference_loss(logits, target, weights=weights, smoothing=0.1, beta=1.0).loss,
                                   logits)[0]
    view = z * 1.0
    out = fused_loss(view, target, weights=weights.float(), smoothing=0.1, beta=1.0, impl="triton",
                     inplace_backward=True)
    out.loss.backward()
    torch.testing.assert_close(z.grad.double(), ref_grad, atol=2e-6, rtol=1e-5)
    print(f"ok {2 * len(CASES) + 1} cases")


if __name__ == "__main__":
    interpreter_main()
