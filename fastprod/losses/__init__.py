"""Losses of the recipe (seed sections 2-3), as plain torch: cross entropy, label smoothing and
symmetric cross entropy, each with optional per-sample weights (O2U) and an ignore index.

`create_loss(cfg)` returns a callable `(logits, target, weights=None) -> LossOutput`. The fused
kernels in `kernels/` compute the same quantities and are tested against `reference_loss`.
"""

from fastprod.kernels.reference import LossOutput, reference_loss
from fastprod.losses.factory import create_loss

__all__ = ["LossOutput", "create_loss", "reference_loss"]
