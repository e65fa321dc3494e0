"""The loss registry (timm style): one small `Loss` class per `loss.name`, registered with `@register_loss`,
each declaring the `loss.impl` paths that compute it; `create_loss` (factory.py) builds the configured one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import ClassVar

import torch

from fastprod.config import ConfigError, LossConfig
from fastprod.kernels import fused_loss, linear_cross_entropy
from fastprod.kernels.reference import LossOutput, LossParams, reference_loss
from fastprod.losses.prior import logit_offset

LossFn = Callable[..., LossOutput]

# loss.impl -> the function that computes a loss of the `LossParams` family on that path
PATHS: dict[str, LossFn] = {
    "reference": reference_loss,  # (logits, target, weights=None): the plain torch formulas
    "fused": fused_loss,  # (logits, target, weights=None, inplace_backward=False): one fused pass per row
    "fused_linear": linear_cross_entropy,  # (features, head_weight, head_bias, target, weights=None): no logits
}
# the paths that can write the gradient over their input logits (fused_linear has no logits to overwrite: its CPU
# path computes dX, dW and db in the forward and scales those buffers in place)
INPLACE_PATHS = ("fused",)


class Loss(ABC):
    """A training loss: its `loss.name`, the `loss.impl` paths that implement it, and its numbers, taken once
    from the config as the `LossParams` every path reads. Each takes the O2U per-sample weights (seed
    section 3) as `weights=`, and adds the logit-adjustment offset tau * log(prior) to the logits
    (`loss.logit_adjust_tau`, prior: the `class_prior` counts; `prior.logit_offset`)."""

    name: ClassVar[str]
    impls: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: LossConfig, class_prior: torch.Tensor | None = None) -> None:
        self.params = self.params_from(cfg)
        if cfg.logit_adjust_tau and class_prior is None:
            raise ConfigError("loss.logit_adjust_tau: needs the training split's class sizes (create_loss(..., "
                              "class_prior=...))")
        self.logit_offset = None if class_prior is None else logit_offset(class_prior, cfg.logit_adjust_tau)

    @staticmethod
    @abstractmethod
    def params_from(cfg: LossConfig) -> LossParams:
        """The loss's numbers from the `loss` section of the config."""

    def path(self, impl: str, inplace_backward: bool = False) -> LossFn:
        """This loss as computed by `impl` (one of `impls`), its numbers bound; `inplace_backward` as in
        `create_loss`."""
        bound = dict(params=self.params, logit_offset=self.logit_offset)
        if inplace_backward and impl in INPLACE_PATHS:
            return partial(PATHS[impl], **bound, inplace_backward=True)
        return partial(PATHS[impl], **bound)


LOSSES: dict[str, type[Loss]] = {}


def register_loss(cls: type[Loss]) -> type[Loss]:
    """Class decorator: make `cls` the loss of `loss.name: <cls.name>`."""
    if cls.name in LOSSES:
        raise ValueError(f"loss {cls.name!r} is registered twice ({LOSSES[cls.name].__name__}, {cls.__name__})")
    if unknown := set(cls.impls) - PATHS.keys():
        raise ValueError(f"loss {cls.name!r} names unknown paths {sorted(unknown)} (known: {list(PATHS)})")
    LOSSES[cls.name] = cls
    return cls
