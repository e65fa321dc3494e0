"""Perspective (seed sections 1-2: augmentations), torchvision RandomPerspective's distribution: with
probability `perspective_p` each corner moves inwards by up to `perspective_distortion` x half the
size, bilinear, mean-colour fill.

- PIL: `v2.RandomPerspective`.
- DALI and FFCV: `perspective_matrix` joins the rotation in one warp (`warp.py`: one resampling).
"""

from __future__ import annotations

import numpy as np
from torchvision.transforms import v2

from fastprod.config import AugmentConfig
from fastprod.data.augment import MEAN_UINT8
from fastprod.data.augmentations.core import compiled, offsets, randint

UNIFORMS = {"p": 1, "corners": 8}  # then the 8 corner offsets
FIRST = None  # where they start in the sample's uniforms: set on registration (augmentations/__init__.py)
_P, _CORNERS = offsets(UNIFORMS)


def enabled(aug: AugmentConfig) -> bool:
    return aug.perspective_p > 0 and aug.perspective_distortion > 0


def pil(size: int, aug: AugmentConfig):
    return v2.RandomPerspective(aug.perspective_distortion, p=aug.perspective_p, fill=MEAN_UINT8)


@compiled
def _solve(a, b):
    """Gaussian elimination with partial pivoting for the 8x8 homography system (numba-friendly)."""
    n = b.shape[0]
    a, b = a.copy(), b.copy()
    for c in range(n):
        piv = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[piv, c]):
                piv = r
        if piv != c:
            for k in range(n):
                a[c, k], a[piv, k] = a[piv, k], a[c, k]
            b[c], b[piv] = b[piv], b[c]
        for r in range(c + 1, n):
            f = a[r, c] / a[c, c]
            for k in range(c, n):
                a[r, k] -= f * a[c, k]
            b[r] -= f * b[c]
    x = np.zeros(n)
    for r in range(n - 1, -1, -1):
        s = b[r]
        for k in range(r + 1, n):
            s -= a[r, k] * x[k]
        x[r] = s / a[r, r]
    return x


@compiled
def _homography(src, dst):
    """3x3 H with H @ (src_i, 1) ~ (dst_i, 1) for four point pairs (rows of 4x2 arrays)."""
    a, b = np.zeros((8, 8)), np.zeros(8)
    for i in range(4):
        x, y, X, Y = src[i, 0], src[i, 1], dst[i, 0], dst[i, 1]
        a[2 * i, 0], a[2 * i, 1], a[2 * i, 2], a[2 * i, 6], a[2 * i, 7] = x, y, 1.0, -x * X, -y * X
        a[2 * i + 1, 3], a[2 * i + 1, 4], a[2 * i + 1, 5], a[2 * i + 1, 6], a[2 * i + 1, 7] = x, y, 1.0, -x * Y, -y * Y
        b[2 * i], b[2 * i + 1] = X, Y
    h = _solve(a, b)
    m = np.ones((3, 3))
    for k in range(8):
        m[k // 3, k % 3] = h[k]
    return m


@compiled
def perspective_matrix(u, size: int, p: float, distortion: float):
    """(matrix, drawn): the output -> input map (pixel centres at integer coordinates) of the sample's
    perspective distortion of a size x size image; the identity and False when it draws none."""
    if not (u[FIRST + _P] < p and distortion > 0):
        return np.eye(3), False
    half = size // 2  # torchvision RandomPerspective: content at the corners moves to the end points
    d = int(distortion * half)
    last = float(size - 1)
    start = np.array([[0.0, 0.0], [last, 0.0], [last, last], [0.0, last]])
    off = np.zeros(8)
    for k in range(8):
        off[k] = randint(u[FIRST + _CORNERS + k], d + 1)
    end = np.array([[off[0], off[1]], [last - off[2], off[3]], [last - off[4], last - off[5]],
                    [off[6], last - off[7]]])
    return _homography(end, start), True  # output (end) -> input (start)
