"""`loss.name: sce`: symmetric cross entropy (Wang et al., ICCV 2019), the seed's loss against noisy labels
(section 3)."""

from __future__ import annotations

from fastprod.config import LossConfig
from fastprod.kernels.reference import LossParams
from fastprod.losses.registry import Loss, register_loss


@register_loss
class SymmetricCrossEntropy(Loss):
    """alpha * CE_e + beta * RCE with RCE = -A (1 - p_y) (the reverse CE of a one-hot label clamped so that
    log 0 -> A): alpha, beta, A = loss.sce_alpha, loss.sce_beta, loss.sce_A; the CE term carries the label
    smoothing e = loss.label_smoothing."""

    name = "sce"
    impls = ("reference", "fused", "fused_linear")

    @staticmethod
    def params_from(cfg: LossConfig) -> LossParams:
        return LossParams(smoothing=cfg.label_smoothing, alpha=cfg.sce_alpha, beta=cfg.sce_beta, A=cfg.sce_A)
