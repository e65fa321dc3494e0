"""`create_loss`: the configured training loss (`loss.name`: ce or sce, with label smoothing;
`loss.impl`: the plain torch reference, the fused row-wise kernels of `kernels/`, or the fused
classifier head + loss)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from fastprod.config import LossConfig
from fastprod.kernels.reference import LossOutput, reference_loss

LossFn = Callable[..., LossOutput]


def create_loss(cfg: LossConfig) -> LossFn:
    """A callable `(logits, target, weights=None) -> LossOutput`.

    impl="fused" gives `kernels.fused_loss` (Triton on CUDA tensors, chunked torch otherwise), which also
    takes `inplace_backward=True` from callers that never read the logits after the loss.
    impl="fused_linear" gives `kernels.linear_cross_entropy`, called as
    `(features, head_weight, head_bias, target, weights=None)`: the caller skips the classifier."""
    alpha, beta = (cfg.sce_alpha, cfg.sce_beta) if cfg.name == "sce" else (1.0, 0.0)
    if cfg.impl == "fused_linear":
        from fastprod.kernels import linear_cross_entropy

        return partial(linear_cross_entropy, smoothing=cfg.label_smoothing, alpha=alpha, beta=beta, A=cfg.sce_A)
    if cfg.impl == "fused":
        from fastprod.kernels import fused_loss

        return partial(fused_loss, smoothing=cfg.label_smoothing, alpha=alpha, beta=beta, A=cfg.sce_A)
    return partial(reference_loss, smoothing=cfg.label_smoothing, alpha=alpha, beta=beta, A=cfg.sce_A)


__all__ = ["LossFn", "create_loss"]
