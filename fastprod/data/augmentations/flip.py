"""Horizontal flip (seed sections 1-2: augmentations), torchvision RandomHorizontalFlip's distribution.

- PIL: `v2.RandomHorizontalFlip`.
- DALI: `fn.flip` with the sample's drawn flag.
- FFCV: `ffcv_apply` per sample (or fused into the crop decoder, `FFCVLoader.FUSE_GEOMETRY`).
"""

from __future__ import annotations

import numpy as np
from torchvision.transforms import v2

from fastprod.config import AugmentConfig
from fastprod.data.augmentations.core import DALIGraph, compiled

UNIFORMS = {"flip": 1}
FIRST = None  # where they start in the sample's uniforms: set on registration (augmentations/__init__.py)
DALI_COLUMNS = 1  # flip flag


def enabled(aug: AugmentConfig) -> bool:
    return aug.hflip_p > 0


def pil(size: int, aug: AugmentConfig):
    return v2.RandomHorizontalFlip(aug.hflip_p)


@compiled
def flips(u, p: float) -> bool:
    return u[FIRST] < p


def dali_feed(u, height: int, width: int, size: int, aug: AugmentConfig) -> tuple:
    return (np.array(flips(u, aug.hflip_p), np.int32),)


def dali_apply(graph: DALIGraph, img, fed):
    return graph.fn.flip(img, horizontal=fed[0])


def ffcv_params(size: int, aug: AugmentConfig) -> tuple:
    return (aug.hflip_p,)


@compiled
def ffcv_apply(src, dst, u, params):
    """One decoded uint8 HWC image into `dst`, flipped when the sample draws it."""
    if flips(u, params[0]):
        dst[:] = src[:, ::-1]
    else:
        dst[:] = src
