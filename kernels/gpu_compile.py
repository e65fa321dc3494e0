"""Compile a Triton kernel for a real NVIDIA GPU without one (the CI check that a fused loss kernel of
the recipe is valid GPU code, not only interpreter code)."""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget

CUDA_CAPABILITIES = (80, 90)  # A100, H100/H200


def compile_for_gpu(fn: triton.JITFunction, signature: dict[str, str], constexprs: dict[str, object],
                    capability: int, num_warps: int) -> triton.compiler.CompiledKernel:
    """`fn` compiled down to a cubin for sm_<capability>; `signature` maps every argument name to a
    Triton type ("*fp32", "i32", ...; "constexpr" for the ones given in `constexprs`)."""
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
