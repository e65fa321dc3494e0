"""`create_loss`: the configured training loss, `loss.name` looked up in the registry and computed by the
`loss.impl` path (the plain torch reference, the fused row-wise kernel or the fused classifier head + loss)."""

from __future__ import annotations

import torch

from fastprod.config import ConfigError, LossConfig
from fastprod.losses.registry import LOSSES, LossFn


def create_loss(cfg: LossConfig, inplace_backward: bool = False, class_prior: torch.Tensor | None = None) -> LossFn:
    """A callable `(logits, target, weights=None) -> LossOutput`; a ConfigError for a `loss.name` no loss is
    registered under, or a `loss.impl` that does not implement it.

    class_prior: the training split's images per class ([C] counts, on the logits' device to spare a copy per
    step), the prior of `loss.logit_adjust_tau` (logit adjustment, `fastprod.losses.prior`); required when that
    is not 0, else unused.

    impl="fused" gives `fastprod.kernels.fused_loss` (Triton on CUDA tensors, chunked torch otherwise).
    impl="fused_linear" gives `fastprod.kernels.linear_cross_entropy`, called as
    `(features, head_weight, head_bias, target, weights=None)`: the caller skips the classifier.

    inplace_backward=True (for callers that never read the logits after the loss, as a training step that
    only backpropagates it) makes impl="fused" write the gradient over the logits during the forward: their
    storage then holds d loss / d logits, and no [B, C] gradient buffer is allocated. Autograd refuses the
    backward if an earlier op saved the logits for its own. The other paths have no logits to overwrite and
    ignore it."""
    if cfg.name not in LOSSES:
        raise ConfigError(f"loss.name: {cfg.name!r} is not a registered loss (registered: {', '.join(LOSSES)})")
    loss = LOSSES[cfg.name]
    if cfg.impl not in loss.impls:
        raise ConfigError(f"loss.impl: {cfg.impl!r} does not implement loss.name {cfg.name!r} "
                          f"(implemented by: {', '.join(loss.impls)})")
    return loss(cfg, class_prior).path(cfg.impl, inplace_backward)


__all__ = ["LossFn", "create_loss"]
