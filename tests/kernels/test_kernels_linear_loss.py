"""The fused head + loss (kernels/linear_loss) against the naive F.linear + reference_loss in float64:
the row-chunked torch path in this process, the Triton kernels under TRITON_INTERPRET=1 in a
subprocess (this file run as a script), and both kernels compiled for sm_80/90."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch

from fastprod.config import A_OFFICIAL, LossConfig
from fastprod.kernels import linear_cross_entropy
from fastprod.kernels.reference import reference_loss
from fastprod.losses import create_loss
from linear_cases import CASES, REALISTIC, check_against_reference, make_case
from row_cases import long_tail_offset, poison_allocations, run_in_interpreter


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of a few rows in the chunked path (one for C >= 1024), so every case spans several."""
    monkeypatch.setattr("fastprod.kernels.linear_loss.chunked.BLOCK_ELEMENTS", 1024)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-D{c[1]}-C{c[2]}-bias{int(c[3])}-e{c[4]}-b{c[6]}")
def test_chunked_path_matches_reference_in_float64(case):
    check_against_reference(partial(linear_cross_entropy, impl="chunked"), case, torch.float64, 1e-9)


@pytest.mark.parametrize("grad_output", [1.0, 0.3])
def test_chunked_path_at_a_realistic_shape(grad_output):
    """A training-sized head (64 rows, D = 128, 50,030 classes) backpropagated from the loss alone, as a training
    step does: the gradient the forward computed, handed over as is (grad_output == 1) or scaled."""
    check_against_reference(partial(linear_cross_entropy, impl="chunked"), REALISTIC, torch.float64, 1e-9,
                            grad_output=grad_output)


@pytest.mark.parametrize("tau", [1.0, 1.5])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-D{c[1]}-C{c[2]}-bias{int(c[3])}-e{c[4]}-b{c[6]}")
def test_logit_adjusted_chunked_path_matches_closed_form(case, tau):
    """Logit adjustment: loss, dX, dW and db of x w^T + b + tau log prior; the recorded CE of the plain logits."""
    check_against_reference(partial(linear_cross_entropy, impl="chunked"), case, torch.float64, 1e-9,
                            offset=long_tail_offset(case[2], tau))


@pytest.mark.parametrize("grad_output", [1.0, 0.3])
def test_logit_adjusted_realistic_shape(grad_output):
    check_against_reference(partial(linear_cross_entropy, impl="chunked"), REALISTIC, torch.float64, 1e-9,
                            grad_output=grad_output, offset=long_tail_offset(REALISTIC[2], 1.5))


def test_logit_adjusted_recomputed_gradient():
    """Per-sample and second backwards recompute the gradient from the saved lse: with the offset added again."""
    check_against_reference(partial(linear_cross_entropy, impl="chunked"), CASES[2], torch.float64, 1e-9,
                            offset=long_tail_offset(CASES[2][2], 1.5), grad_output=None)


@pytest.mark.parametrize("inplace", [False, True])
def test_create_loss_fused_linear_matches_reference(inplace):
    """create_loss(cfg, inplace_backward=...) on loss.impl=fused_linear: the same loss and gradients either way
    (it has no logits to overwrite)."""
    cfg = LossConfig(name="sce", label_smoothing=0.1, sce_beta=0.1, impl="fused_linear")
    loss = create_loss(cfg, inplace_backward=inplace)
    check_against_reference(lambda x, w, b, target, weights, **_: loss(x, w, b, target, weights=weights),
                            REALISTIC, torch.float64, 1e-9, grad_output=1.0)


def test_a_second_backward_recomputes_the_gradient():
    """The gradient the forward computed serves one backward; a second one (retain_graph) recomputes it."""
    (x, w, b), target, weights = make_case(6, 16, 900, True, True, [2], zero_weight=[4])
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = linear_cross_entropy(*leaves, target, weights=weights, smoothing=0.1, beta=0.1, impl="chunked")
    out.loss.backward(retain_graph=True)
    out.loss.backward(torch.tensor(0.5, dtype=torch.float64))
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_loss = reference_loss(torch.nn.functional.linear(*ref), target, weights=weights, smoothing=0.1, beta=0.1).loss
    for got, want in zip(leaves, torch.autograd.grad(ref_loss, ref)):
        torch.testing.assert_close(got.grad, 1.5 * want, atol=1e-12, rtol=1e-10)


def test_per_sample_alone_matches_reference():
    """Only per_sample backpropagated (the loss output unused): the gradient recomputed with per-row scales."""
    (x, w, b), target, weights = make_case(6, 16, 900, True, True, [2], zero_weight=[4])
    r = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    grads = []
    for impl in ("reference", "chunked"):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        (linear_cross_entropy(*leaves, target, weights=weights, smoothing=0.1, beta=0.1, impl=impl).per_sample
         @ r).backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*reversed(grads)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_no_gradient_under_no_grad():
    """Under torch.no_grad() the forward computes the loss alone (the same loss), and nothing needs a backward."""
    (x, w, b), target, weights = make_case(5, 8, 300, True, True, [1])
    x.requires_grad_()
    with torch.no_grad():
        out = linear_cross_entropy(x, w, b, target, weights=weights, beta=0.1, impl="chunked")
    ref = reference_loss(x.detach() @ w.T + b, target, weights=weights, beta=0.1)
    torch.testing.assert_close(out.per_sample, ref.per_sample, atol=1e-12, rtol=1e-10)
    assert not out.loss.requires_grad and x.grad is None


def test_chunked_path_frozen_weight_float32():
    check_against_reference(linear_cross_entropy, CASES[2], torch.float32, 1e-4, needs=(True, False, True))


def test_reference_impl_is_the_naive_expression():
    (x, w, b), target, weights = make_case(5, 6, 70, True, True, [2])
    out = linear_cross_entropy(x, w, b, target, weights=weights, beta=0.1, impl="reference")
    naive = torch.nn.functional.cross_entropy(x @ w.T + b, target, reduction="none") * weights
    naive[2] = 0
    torch.testing.assert_close(out.per_sample[[0, 1, 3, 4]], naive[[0, 1, 3, 4]] + 0.1 * -A_OFFICIAL * (
        1 - torch.exp(-out.ce[[0, 1, 3, 4]])) * weights[[0, 1, 3, 4]])


def test_mixed_dtypes_are_refused():
    (x, w, b), target, _ = make_case(2, 4, 10, True, False, [])
    with pytest.raises(ValueError, match="share a dtype"):
        linear_cross_entropy(x.float(), w, b, target)


@pytest.mark.e2e
def test_triton_kernels_in_the_interpreter():
    assert f"ok {2 * len(CASES) + 1} cases" in run_in_interpreter(__file__)


COMMON_SIGNATURE = {"n_rows": "i32", "n_classes": "i32", "dim": "i32", "stride_x": "i32", "stride_w": "i32",
                    "HAS_BIAS": "constexpr", "BLOCK_B": "constexpr", "BLOCK_C": "constexpr", "BLOCK_D": "constexpr",
                    "INPUT_PRECISION": "constexpr"}


@pytest.mark.parametrize("capability", [80, 90])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_kernels_compile_for_gpu(capability, dtype):
    from fastprod.kernels.gpu_compile import compile_for_gpu
    from fastprod.kernels.linear_loss.triton import BLOCKS, NUM_WARPS, linear_grad_kernel, linear_lse_kernel

    tensors = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": f"*{dtype}"}
    tensors["o_ptr"] = "*fp32"
    constexprs = dict(BLOCKS, HAS_BIAS=True, HAS_OFFSET=dtype == "fp32",
                      INPUT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    lse_sig = {**tensors, **{k: "*fp32" for k in ("m_ptr", "s_ptr", "m_plain_ptr", "s_plain_ptr")},
               **COMMON_SIGNATURE, "HAS_OFFSET": "constexpr"}
    grad_sig = {**tensors, "target_ptr": "*i64", **{k: "*fp32" for k in ("lse_ptr", "s_ptr", "t_ptr", "u_ptr",
                "dx_ptr", "dw_ptr", "db_ptr")}, **COMMON_SIGNATURE, "HAS_OFFSET": "constexpr", "COMPUTE_DX": "constexpr",
                "COMPUTE_DW": "constexpr", "COMPUTE_DB": "constexpr"}
    grad_constexprs = dict(constexprs, COMPUTE_DX=True, COMPUTE_DW=True, COMPUTE_DB=True)
    for fn, sig, const in [(linear_lse_kernel, lse_sig, constexprs), (linear_grad_kernel, grad_sig, grad_constexprs)]:
        kernel = compile_for_gpu(fn, sig, const, capability, NUM_WARPS)
        assert kernel.asm["cubin"] and f".target sm_{capability}" in kernel.asm["ptx"]


def interpreter_main() -> None:
    """Run under TRITON_INTERPRET=1: every case through the Triton kernels in float32 with small tiles,
    allocations poisoned with NaN so any output element left unwritten fails."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from fastprod.kernels.linear_loss.autograd import LinearBackend, LinearLossFunction, loss_from_lse
    from fastprod.kernels.linear_loss.triton import linear_grads_triton, linear_lse_triton
    from fastprod.kernels.reference import LossOutput, LossParams

    poison_allocations()

    def triton_loss(x, w, b, target, *, weights, smoothing, alpha, beta, A, blocks, logit_offset=None):
        chunk = 4 * blocks["BLOCK_C"] + 7  # several gradient launches, the last one partial
        backend = LinearBackend(partial(loss_from_lse, partial(linear_lse_triton, blocks=blocks)),
                                partial(linear_grads_triton, blocks=blocks, class_chunk=chunk))
        p = LossParams(smoothing, alpha, beta, A)
        return LossOutput(*LinearLossFunction.apply(x, w, b, target, weights, logit_offset, p, backend,
                                                    torch.is_grad_enabled()))

    small = {"BLOCK_B": 16, "BLOCK_C": 32, "BLOCK_D": 16}
    for case in CASES:
        blocks = dict(small, BLOCK_C=256) if case[2] > 10000 else small
        check_against_reference(partial(triton_loss, blocks=blocks), case, torch.float32, 2e-5)
        check_against_reference(partial(triton_loss, blocks=blocks), case, torch.float32, 2e-5,
                                offset=long_tail_offset(case[2], 1.5))
    check_against_reference(partial(triton_loss, blocks=small), CASES[2], torch.float32, 2e-5, needs=(False, True, False))
    print(f"ok {2 * len(CASES) + 1} cases")


if __name__ == "__main__":
    interpreter_main()
