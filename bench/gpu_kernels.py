"""The fused loss kernels on one GPU, in one call: checks each against the reference, then times it
against torch in the same run (kernels/; the recipe's 50,030-class SCE / O2U-weighted loss).

    python bench/gpu_kernels.py [--classes 50030] [--batches 256 1024] [--dim 2048] [--json FILE]

1. Copy bandwidth: `dst.copy_(src)` of 1 GiB, bytes read + written per second (the roofline).
2. Row-wise loss on bf16 logits [B, C]: the Triton kernel alone (forward and backward in one launch)
   and the whole autograd fwd+bwd, against the plain torch reference in eager mode and under
   torch.compile. Effective bandwidth = 3 B C 2 bytes (two reads of the logits, one gradient write)
   / time, as a fraction of the copy bandwidth (target >= 70% for the kernel). Peak memory beyond
   the inputs and the returned gradient.
3. Linear + loss, features [B, D] and head [C, D] + bias in bf16: naive F.linear + reference vs the
   Triton fused op (and the row-chunked torch path): fwd+bwd time and peak memory beyond the inputs
   and the returned gradients (target: >= 10x lower, time no worse).
Exits 1 if any check against the reference fails (after printing every figure).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from fastprod.kernels import fused_loss, linear_cross_entropy
from fastprod.kernels.common import inv_valid_count
from fastprod.kernels.reference import LossParams, reference_loss
from fastprod.kernels.row_loss.triton import row_loss_triton
from results import write_json

LOSS = dict(alpha=1.0, beta=0.1, smoothing=0.1)  # SCE with label smoothing: every term of the kernels
FAILURES: list[str] = []


def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    err = ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1e-12)).item()
    status = "ok" if err <= tol else "FAIL"
    if err > tol:
        FAILURES.append(name)
    print(f"  check {name}: max error / max |ref| = {err:.2e} (tol {tol:g}) {status}")


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def peak_extra_mib(fn) -> float:
    """Peak allocated memory during fn() beyond what was allocated before and what fn returns."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    outputs = fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base - tensor_bytes(outputs)) / 2**20


def copy_bandwidth() -> float:
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def row_loss_bench(batch: int, classes: int, copy_bw: float) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(batch)
    logits = (torch.randn(batch, classes, device="cuda", generator=g) * 3).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, classes, (batch,), device="cuda", generator=g)
    weights = torch.rand(batch, device="cuda", generator=g) * 2

    def autograd_step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(logits, target, weights).loss, logits)

    eager = autograd_step(lambda z, t, w: reference_loss(z, t, weights=w, **LOSS))
    compiled_loss = torch.compile(lambda z, t, w: reference_loss(z, t, weights=w, **LOSS))
    compiled = autograd_step(compiled_loss)
    triton_step = autograd_step(lambda z, t, w: fused_loss(z, t, weights=w, impl="triton", **LOSS))
    p = LossParams(**LOSS)
    inv_n, grad_out = inv_valid_count(target, p, torch.float32), torch.empty_like(logits)

    def kernel():  # writes the preallocated grad_out: nothing returned beyond the inputs
        row_loss_triton(logits.detach(), target, weights, inv_n, p, grad_out)
        return ()

    z64 = logits.detach().double().requires_grad_()
    ref = reference_loss(z64, target, weights=weights.double(), **LOSS)
    ref_grad, = torch.autograd.grad(ref.loss, z64)
    out = fused_loss(logits, target, weights=weights, impl="triton", **LOSS)
    grad, = torch.autograd.grad(out.loss, logits)
    check(f"row loss B={batch} per-sample", out.per_sample, ref.per_sample, 1e-2)
    check(f"row loss B={batch} ce", out.ce, ref.ce, 1e-2)
    check(f"row loss B={batch} grad", grad, ref_grad, 2e-2)
    compiled()  # compile outside the timing

    useful = 3 * batch * classes * logits.element_size()
    rows = []
    for name, fn in [("torch eager fwd+bwd", eager), ("torch.compile fwd+bwd", compiled),
                     ("triton fwd+bwd (autograd)", triton_step), ("triton kernel alone", kernel)]:
        ms = do_bench(fn)
        rows.append({"bench": "row_loss", "batch": batch, "classes": classes, "impl": name, "ms": ms,
                     "bandwidth_gbs": useful / (ms * 1e-3) / 1e9, "of_copy_bw": useful / (ms * 1e-3) / copy_bw,
                     "peak_extra_mib": peak_extra_mib(fn)})
    return rows


def linear_loss_bench(batch: int, dim: int, classes: int) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(batch + dim)
    x = torch.randn(batch, dim, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(classes, dim, device="cuda", generator=g) * dim ** -0.5).to(torch.bfloat16).requires_grad_()
    b = torch.zeros(classes, device="cuda", dtype=torch.bfloat16).requires_grad_()
    target = torch.randint(0, classes, (batch,), device="cuda", generator=g)
    weights = torch.rand(batch, device="cuda", generator=g) * 2

    def step(impl: str):
        def fn():
            if impl == "naive":
                out = reference_loss(F.linear(x, w, b), target, weights=weights, **LOSS)
            else:
                out = linear_cross_entropy(x, w, b, target, weights=weights, impl=impl, **LOSS)
            return torch.autograd.grad(out.loss, (x, w, b))
        return fn

    params64 = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = reference_loss(F.linear(*params64), target, weights=weights.double(), **LOSS)
    ref_grads = torch.autograd.grad(ref.loss, params64)
    out = linear_cross_entropy(x, w, b, target, weights=weights, impl="triton", **LOSS)
    grads = torch.autograd.grad(out.loss, (x, w, b))
    check(f"linear loss B={batch} D={dim} per-sample", out.per_sample, ref.per_sample, 2e-2)
    for name, got, want in zip(("dX", "dW", "db"), grads, ref_grads):
        check(f"linear loss B={batch} D={dim} {name}", got, want, 3e-2)

    rows = []
    for impl in ("naive", "triton", "chunked"):
        fn = step(impl)
        rows.append({"bench": "linear_loss", "batch": batch, "dim": dim, "classes": classes, "impl": impl,
                     "ms": do_bench(fn), "peak_extra_mib": peak_extra_mib(fn)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=50030)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_kernels.py needs a CUDA GPU (the CPU figures are bench/kernels_cpu.py)")
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    copy_bw = copy_bandwidth()
    print(f"copy bandwidth: {copy_bw / 1e9:.0f} GB/s")
    rows = []
    for batch in args.batches:
        rows += row_loss_bench(batch, args.classes, copy_bw)
        rows += linear_loss_bench(batch, args.dim, args.classes)
    for bench in ("row_loss", "linear_loss"):
        print(f"\n{bench}, C={args.classes}, bf16" + (f", D={args.dim}" if bench == "linear_loss" else ""))
        for batch in args.batches:
            group = [r for r in rows if r["bench"] == bench and r["batch"] == batch]
            base = group[0]
            for r in group:
                bw = f"  {r['bandwidth_gbs']:7.0f} GB/s ({100 * r['of_copy_bw']:3.0f}% of copy)" if "of_copy_bw" in r else ""
                print(f"  B={batch:5d} {r['impl']:28s} {r['ms']:8.3f} ms  x{base['ms'] / r['ms']:5.2f} speed{bw}"
                      f"  peak extra {r['peak_extra_mib']:8.1f} MiB (x{base['peak_extra_mib'] / max(r['peak_extra_mib'], 1e-3):.1f} less)")
    for r in rows:
        r["label"] = f"{r['bench']} B={r['batch']} {r['impl']}"
    write_json(args.json, "gpu_kernels", f"fused loss kernels on GPU, C={args.classes}, bf16 "
               f"(copy bandwidth {copy_bw / 1e9:.0f} GB/s; failed checks: {FAILURES or 'none'})",
               "torch eager (row loss) / naive F.linear + loss (linear loss), same run", rows,
               {"label": "label", "value": "ms", "ylabel": "fwd+bwd ms"})
    if FAILURES:
        print(f"\nFAILED checks: {FAILURES}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
