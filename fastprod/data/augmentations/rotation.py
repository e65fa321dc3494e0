"""Rotation (seed sections 1-2: augmentations), torchvision RandomApply(RandomRotation)'s distribution:
with probability `rotation_p` an angle uniform in +-`rotation_degrees` about the centre, bilinear,
mean-colour fill.

- PIL: `v2.RandomApply([v2.RandomRotation])`.
- DALI and FFCV: `rotation_matrix` joins the perspective in one warp (`warp.py`: one resampling).
"""

from __future__ import annotations

import math

import numpy as np
from torchvision.transforms import v2

from fastprod.config import AugmentConfig
from fastprod.data.augment import MEAN_UINT8
from fastprod.data.augmentations.core import compiled, offsets

UNIFORMS = {"p": 1, "angle": 1}
FIRST = None  # where they start in the sample's uniforms: set on registration (augmentations/__init__.py)
_P, _ANGLE = offsets(UNIFORMS)


def enabled(aug: AugmentConfig) -> bool:
    return aug.rotation_p > 0 and aug.rotation_degrees > 0


def pil(size: int, aug: AugmentConfig):
    rotate = v2.RandomRotation(aug.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=MEAN_UINT8)
    return v2.RandomApply([rotate], p=aug.rotation_p)


@compiled
def rotation_matrix(u, size: int, p: float, degrees: float):
    """(matrix, drawn): the output -> input map (pixel centres at integer coordinates) of the sample's
    rotation about the centre of a size x size image; the identity and False when it draws none."""
    if not (u[FIRST + _P] < p and degrees > 0):
        return np.eye(3), False
    theta = math.radians(-degrees + 2 * degrees * u[FIRST + _ANGLE])
    c, s, mid = math.cos(theta), math.sin(theta), (size - 1) / 2
    return np.array([[c, -s, mid - c * mid + s * mid], [s, c, mid - s * mid - c * mid], [0.0, 0.0, 1.0]]), True
