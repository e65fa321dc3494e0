"""Fused classifier head + loss that never materialises the [B, C] logits."""

from fastprod.kernels.linear_loss.autograd import linear_cross_entropy

__all__ = ["linear_cross_entropy"]
