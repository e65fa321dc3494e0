"""Fused loss kernels (Triton on GPU, chunked torch on CPU) for the recipe's SCE / weighted losses."""
