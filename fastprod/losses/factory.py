"""`create_loss`: the configured training loss (`loss.name`: ce or sce, with label smoothing)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial


from fastprod.config import LossConfig
from fastprod.losses.reference import LossOutput, reference_loss

LossFn = Callable[..., LossOutput]


def create_loss(cfg: LossConfig) -> LossFn:
    """A callable `(logits, target, weights=None) -> LossOutput`."""
    alpha, beta = (cfg.sce_alpha, cfg.sce_beta) if cfg.name == "sce" else (1.0, 0.0)
    return partial(reference_loss, smoothing=cfg.label_smoothing, alpha=alpha, beta=beta, A=cfg.sce_A)


__all__ = ["LossFn", "create_loss"]
