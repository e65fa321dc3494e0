"""Cutout (seed sections 1-2: augmentations), torchvision RandomErasing's distribution: with
probability `cutout_p` a rectangle of `cutout_scale` of the area (aspect 0.3-3.3) filled with the
mean colour (zero after normalisation).

- PIL: `v2.RandomErasing` on the uint8 tensor (`PIL_TENSOR`: after PILToTensor).
- DALI: `fn.erase` with the sample's rectangle (an empty one when it draws none).
- FFCV: `ffcv_apply` per sample.
"""

from __future__ import annotations

import math

import numpy as np
from torchvision.transforms import v2

from fastprod.config import AugmentConfig
from fastprod.data.augment import MEAN_UINT8
from fastprod.data.augmentations.core import DALIGraph, compiled, offsets, randint, round_half_up

UNIFORMS = {"p": 1, "attempts": 20, "position": 2}  # 10 attempts x (area, log-ratio); then row, column
FIRST = None  # where they start in the sample's uniforms: set on registration (augmentations/__init__.py)
_P, _ATTEMPTS, _POSITION = offsets(UNIFORMS)
PIL_TENSOR = True
DALI_COLUMNS = 2  # rectangle anchor (top, left), shape (h, w)
_FILL = np.array(MEAN_UINT8, dtype=np.uint8)


def enabled(aug: AugmentConfig) -> bool:
    return aug.cutout_p > 0


def pil(size: int, aug: AugmentConfig):
    return v2.RandomErasing(p=aug.cutout_p, scale=aug.cutout_scale, value=list(MEAN_UINT8))


@compiled
def cutout_box(u, size: int, p: float, scale_lo: float, scale_hi: float):
    """torchvision RandomErasing.get_params on a size x size image: (top, left, h, w), h = w = 0 for none."""
    if not u[FIRST + _P] < p:
        return 0, 0, 0, 0
    area = size * size
    log_lo, log_hi = math.log(0.3), math.log(3.3)
    for k in range(10):
        target = area * (scale_lo + (scale_hi - scale_lo) * u[FIRST + _ATTEMPTS + 2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[FIRST + _ATTEMPTS + 2 * k + 1])
        h = round_half_up(math.sqrt(target * aspect))
        w = round_half_up(math.sqrt(target / aspect))
        if 0 < h < size and 0 < w < size:
            return randint(u[FIRST + _POSITION], size - h + 1), randint(u[FIRST + _POSITION + 1], size - w + 1), h, w
    return 0, 0, 0, 0


def dali_feed(u, height: int, width: int, size: int, aug: AugmentConfig) -> tuple:
    top, left, h, w = cutout_box(u, size, aug.cutout_p, *aug.cutout_scale)
    return np.array([top, left], np.float32), np.array([h, w], np.float32)


def dali_apply(graph: DALIGraph, img, fed):
    anchor, shape = fed
    return graph.fn.erase(img, anchor=anchor, shape=shape, axis_names="HW", fill_value=list(MEAN_UINT8))


def ffcv_params(size: int, aug: AugmentConfig) -> tuple:
    return size, aug.cutout_p, aug.cutout_scale[0], aug.cutout_scale[1]


@compiled
def ffcv_apply(src, dst, u, params):
    """One decoded uint8 HWC image into `dst`, with the sample's rectangle (if any) in the fill colour."""
    size, p, scale_lo, scale_hi = params
    dst[:] = src
    top, left, h, w = cutout_box(u, size, p, scale_lo, scale_hi)
    cutout_one(dst, top, left, h, w, _FILL)


@compiled
def cutout_one(out, top, left, h, w, fill):
    for y in range(top, top + h):
        for x in range(left, left + w):
            for c in range(3):
                out[y, x, c] = fill[c]
