"""The recipe's training losses (seed sections 2-3), one small class per `loss.name` in a registry:
`ce` (cross entropy with label smoothing, ce.py) and `sce` (symmetric cross entropy, sce.py), each with
optional O2U per-sample weights and an ignore index.

`create_loss(cfg, inplace_backward=False, class_prior=None)` returns a callable `(logits, target, weights=None)
-> LossOutput` on the `loss.impl` path (inplace_backward=True: the fused path writes the gradient over the
logits; class_prior: the training class sizes, for logit adjustment, `loss.logit_adjust_tau`, prior.py).
The formulas and the fused kernels live in `fastprod.kernels` (`reference_loss` is the plain torch one);
this package imports them, never the reverse.
"""

from fastprod.kernels.reference import LossOutput, reference_loss
from fastprod.losses.ce import CrossEntropy
from fastprod.losses.factory import create_loss
from fastprod.losses.prior import logit_offset
from fastprod.losses.registry import LOSSES, PATHS, Loss, LossFn, register_loss
from fastprod.losses.sce import SymmetricCrossEntropy

__all__ = ["LOSSES", "PATHS", "CrossEntropy", "Loss", "LossFn", "LossOutput", "SymmetricCrossEntropy",
           "create_loss", "logit_offset", "reference_loss", "register_loss"]
