"""Random-resized crop (seed sections 1-2: augmentations), torchvision RandomResizedCrop's distribution.

The first stage everywhere, and where decoding happens on DALI and FFCV: only the crop window is
decoded (DALI `image_slice`; FFCV at a reduced DCT scale) and then resized to the output size, so
the later operations' cost does not grow with the source resolution. Evaluation decodes the centre
window (`center_window`) the same way.

- PIL: `v2.RandomResizedCrop` (antialiased).
- DALI: `fn.decoders.image_slice` of the window (`mixed` = nvJPEG on the GPU, `cpu` = libjpeg-turbo,
  fast IDCT) -> antialiased linear resize.
- FFCV: the decoder `fastprod.data.loaders.ffcv_ops.SeededRandomResizedCrop` (it subclasses FFCV's
  decoder, so it lives where FFCV is imported), which resizes with `resize_one` below and can fuse
  the flip and the warp.
"""

from __future__ import annotations

import math

import numpy as np
from torchvision.transforms import v2

from fastprod.config import AugmentConfig
from fastprod.data.augmentations.core import DALIGraph, compiled, offsets, randint, round_half_up

UNIFORMS = {"attempts": 20, "position": 2}  # 10 attempts x (area, log-ratio); then row, column
FIRST = None  # where they start in the sample's uniforms: set on registration (augmentations/__init__.py)
_ATTEMPTS, _POSITION = offsets(UNIFORMS)
DALI_COLUMNS = 2  # window anchor (top, left), shape (h, w)


def enabled(aug: AugmentConfig) -> bool:
    return True


def pil(size: int, aug: AugmentConfig):
    return v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio, antialias=True)


@compiled
def crop_window(u, height: int, width: int, scale_lo: float, scale_hi: float, ratio_lo: float, ratio_hi: float):
    """torchvision RandomResizedCrop.get_params: (top, left, h, w) in source pixels."""
    area = height * width
    log_lo, log_hi = math.log(ratio_lo), math.log(ratio_hi)
    for k in range(10):
        target = area * (scale_lo + (scale_hi - scale_lo) * u[FIRST + _ATTEMPTS + 2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[FIRST + _ATTEMPTS + 2 * k + 1])
        w = round_half_up(math.sqrt(target * aspect))
        h = round_half_up(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return (randint(u[FIRST + _POSITION], height - h + 1), randint(u[FIRST + _POSITION + 1], width - w + 1),
                    h, w)
    in_ratio = width / height
    if in_ratio < ratio_lo:
        w, h = width, round_half_up(width / ratio_lo)
    elif in_ratio > ratio_hi:
        h, w = height, round_half_up(height * ratio_hi)
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@compiled
def center_window(height: int, width: int, eval_resize: float):
    """Eval: the source window that `resize short side to size*eval_resize, center crop size` shows."""
    side = max(1, round_half_up(min(height, width) / eval_resize))
    return (height - side) // 2, (width - side) // 2, side, side


def _window(top: int, left: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array([top, left], np.float32), np.array([h, w], np.float32)


def dali_feed(u, height: int, width: int, size: int, aug: AugmentConfig) -> tuple:
    return _window(*crop_window(u, height, width, *aug.crop_scale, *aug.crop_ratio))


def dali_eval_feed(height: int, width: int, eval_resize: float) -> tuple:
    return _window(*center_window(height, width, eval_resize))


def dali_apply(graph: DALIGraph, encoded, fed):
    """Decode only the window, then resize it to the output size."""
    fn, types, (anchor, shape) = graph.fn, graph.types, fed
    img = fn.decoders.image_slice(
        encoded, anchor, shape, device="mixed" if graph.gpu else "cpu", output_type=types.RGB,
        axis_names="HW", normalized_anchor=False, normalized_shape=False,
        adjust_orientation=False, use_fast_idct=True)
    return fn.resize(img, size=[graph.size, graph.size], antialias=True, interp_type=types.INTERP_LINEAR)


@compiled(fastmath=True, error_model="numpy")
def resize_one(src, top, left, h, w, out):
    """Bilinear (pixel-centre aligned) resize of src[top:top+h, left:left+w] to out; the FFCV decoder's
    DCT scaling keeps the reduction under 2x, where bilinear needs no antialiasing filter."""
    oh, ow = out.shape[0], out.shape[1]
    xs0, xs1, fxs = np.empty(ow, np.int64), np.empty(ow, np.int64), np.empty(ow, np.float32)
    for x in range(ow):
        sx = min(max((x + 0.5) * w / ow - 0.5, 0.0), w - 1.0)
        x0 = int(sx)
        xs0[x], xs1[x], fxs[x] = left + x0, left + min(x0 + 1, w - 1), sx - x0
    for y in range(oh):
        sy = min(max((y + 0.5) * h / oh - 0.5, 0.0), h - 1.0)
        y0 = int(sy)
        fy = np.float32(sy - y0)
        r0, r1 = src[top + y0], src[top + min(y0 + 1, h - 1)]
        for x in range(ow):
            a, b, fx = xs0[x], xs1[x], fxs[x]
            for c in range(3):
                top_v = r0[a, c] + fx * (np.float32(r0[b, c]) - r0[a, c])
                bot_v = r1[a, c] + fx * (np.float32(r1[b, c]) - r1[a, c])
                out[y, x, c] = np.uint8(top_v + fy * (bot_v - top_v) + 0.5)
