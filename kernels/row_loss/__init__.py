"""Fused row-wise loss over logits in memory: CE with label smoothing (seed section 2), SCE and the O2U
per-sample weights (seed section 3)."""

from fastprod.kernels.row_loss.autograd import fused_loss

__all__ = ["fused_loss"]
