"""One warp for rotation and perspective on DALI and FFCV (seed sections 1-2: augmentations).

Not an augmentation of its own: the DALI/FFCV stage that applies the augmentations it `JOINS` in one
resampling at the output size, through the composed output -> input map (rotation, then
perspective, as the PIL reference applies them), bilinear, mean-colour fill. A sample that draws
neither is passed through untouched.

- DALI: `fn.experimental.warp_perspective` under a DALI conditional (`DALI_CONDITIONAL`), so only the
  samples that draw a warp are resampled (`warp_affine` would do for rotation alone, but perspective
  needs the 3x3 map).
- FFCV: `ffcv_apply` per sample with `warp_one` (or fused into the crop decoder,
  `FFCVLoader.FUSE_GEOMETRY`).
"""

from __future__ import annotations

import numpy as np

from fastprod.config import AugmentConfig
from fastprod.data.augment import MEAN_UINT8
from fastprod.data.augmentations import perspective, rotation
from fastprod.data.augmentations.core import DALIGraph, compiled, matmul3
from fastprod.data.augmentations.perspective import perspective_matrix
from fastprod.data.augmentations.rotation import rotation_matrix

JOINS = (rotation, perspective)
DALI_COLUMNS = 2  # the 3x3 map, whether the sample warps at all
DALI_CONDITIONAL = True
_FILL = np.array(MEAN_UINT8, dtype=np.uint8)


@compiled
def warp_matrix(u, size: int, rot_p: float, degrees: float, persp_p: float, distortion: float):
    """(matrix, any): the output -> input map (pixel centres at integer coordinates) of a rotation about the
    centre followed by a perspective distortion, at the output size; `any` is False when neither applies."""
    m, distort = perspective_matrix(u, size, persp_p, distortion)
    r, rotate = rotation_matrix(u, size, rot_p, degrees)
    if rotate:
        m = matmul3(r, m)  # output -> (perspective inverse) -> rotated image -> (rotation inverse) -> input
    return m, rotate or distort


def _matrix(u, size: int, aug: AugmentConfig):
    return warp_matrix(u, size, aug.rotation_p, aug.rotation_degrees, aug.perspective_p, aug.perspective_distortion)


def dali_feed(u, height: int, width: int, size: int, aug: AugmentConfig) -> tuple:
    matrix, warps = _matrix(u, size, aug)
    return matrix.astype(np.float32), np.array(warps, dtype=bool)


def dali_apply(graph: DALIGraph, img, fed):
    matrix, warps = fed
    if warps:  # a DALI conditional splits the batch, so most samples skip the resampling
        img = graph.fn.experimental.warp_perspective(
            img, matrix=matrix, size=[graph.size, graph.size], fill_value=list(MEAN_UINT8), pixel_origin="center",
            inverse_map=True, border_mode="constant", interp_type=graph.types.INTERP_LINEAR)
    return img


def ffcv_params(size: int, aug: AugmentConfig) -> tuple:
    return size, aug.rotation_p, aug.rotation_degrees, aug.perspective_p, aug.perspective_distortion


@compiled
def ffcv_apply(src, dst, u, params):
    """One decoded uint8 HWC image into `dst`, warped when the sample draws rotation or perspective."""
    size, rot_p, degrees, persp_p, distortion = params
    m, active = warp_matrix(u, size, rot_p, degrees, persp_p, distortion)
    if active:
        warp_one(src, dst, m, _FILL)
    else:
        dst[:] = src


@compiled(fastmath=True, error_model="numpy")
def warp_one(src, out, m, fill):
    """out[y, x] = bilinear src at m @ (x, y, 1); the fill colour outside."""
    hh, ww = src.shape[0], src.shape[1]
    m = m.astype(np.float32)
    for y in range(out.shape[0]):
        bx, by, bz = m[0, 1] * y + m[0, 2], m[1, 1] * y + m[1, 2], m[2, 1] * y + m[2, 2]
        for x in range(out.shape[1]):
            inv = np.float32(1.0) / (m[2, 0] * x + bz)
            sx, sy = (m[0, 0] * x + bx) * inv, (m[1, 0] * x + by) * inv
            if sx >= 0 and sy >= 0 and sx < ww - 1 and sy < hh - 1:  # inside: no border tests
                x0, y0 = int(sx), int(sy)
                fx, fy = sx - x0, sy - y0
                r0, r1 = src[y0], src[y0 + 1]
                for c in range(3):
                    t = r0[x0, c] + fx * (np.float32(r0[x0 + 1, c]) - r0[x0, c])
                    b = r1[x0, c] + fx * (np.float32(r1[x0 + 1, c]) - r1[x0, c])
                    out[y, x, c] = np.uint8(t + fy * (b - t) + 0.5)
                continue
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            for c in range(3):
                v = np.float32(0.0)
                for dy in range(2):
                    for dx in range(2):
                        yy, xx = y0 + dy, x0 + dx
                        wgt = (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
                        v += wgt * (src[yy, xx, c] if 0 <= yy < hh and 0 <= xx < ww else fill[c])
                out[y, x, c] = np.uint8(min(np.float32(255.0), max(np.float32(0.0), v + 0.5)))
