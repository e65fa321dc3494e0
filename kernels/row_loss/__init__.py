"""Fused row-wise loss: CE / label smoothing / SCE with O2U weights over logits in memory."""

from fastprod.kernels.row_loss.autograd import fused_loss

__all__ = ["fused_loss"]
