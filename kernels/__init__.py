"""Fused loss kernels for the recipe's SCE / label-smoothed / O2U-weighted losses (seed sections 2-3):
Triton on GPU, chunked torch on CPU, both tested against `fastprod.losses.reference_loss`.

- `fused_loss(logits, target, ...)`: one fused pass per row over logits in memory (`kernels/row_loss`).
- `linear_cross_entropy(features, weight, bias, target, ...)`: head + loss without the logits (`kernels/linear_loss`).
"""

from fastprod.kernels.linear_loss import linear_cross_entropy
from fastprod.kernels.row_loss import fused_loss

__all__ = ["fused_loss", "linear_cross_entropy"]
