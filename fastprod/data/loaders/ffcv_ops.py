"""The FFCV backend's seeded operations (seed sections 1-2: augmentations), importable and testable on their own.

Importing this module imports FFCV (`fastprod.data.loaders.ffcv` does so only when an FFCV loader is
built). Every operation draws its sample's uniforms from (seed, epoch, index) (`uniforms` below): the
seed and the epoch come from a 2-element int64 array the loader owns (`box`, read through its address,
so a new epoch needs no recompilation), the index from FFCV. The per-sample work is the augmentation
modules' numba-compiled code (`fastprod.data.augmentations`, `jitted()`).

- `SeededRandomResizedCrop`: the decoder, the FFCV implementation of `augmentations.crop` (random-
  resized crop, or with `eval_resize` > 0 the eval centre window, decoded at a reduced DCT scale and
  resized bilinearly); with `fused`, also the stages it `FUSES` (flip, and the rotation/perspective
  warp) in one resampling.
- `SeededOperation(stage, ...)`: any other augmentation stage (`augmentations.stages`) as an FFCV
  operation: its `ffcv_apply` per image of the decoded uint8 HWC batch.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import ctypes_memcopy, imdecode
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from numba import njit

from fastprod.config import AugmentConfig
from fastprod.data import augmentations
from fastprod.data.augment import MEAN_UINT8
from fastprod.data.augmentations import core, crop, flip, warp

_JIT = augmentations.jitted()
_sample_seed, _N_UNIFORMS = _JIT[core.sample_seed], augmentations.N_UNIFORMS


@njit
def uniforms(addr, index):
    """The sample's uniforms, with (seed, epoch) read from the loader's box at `addr`."""
    state = np.zeros(2, np.int64)
    ctypes_memcopy(addr, state.ctypes.data, 16)
    np.random.seed(_sample_seed(state[0], state[1], index))
    u = np.empty(_N_UNIFORMS)
    for k in range(_N_UNIFORMS):
        u[k] = np.random.random()
    return u


class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
    """Random-resized crop from (seed, epoch, index); with `eval_resize` > 0 the centre window instead.
    With `fused`, also the flip and the rotation/perspective warp: a sample that draws a warp is
    resampled once, from the decoded crop straight to the output (what the flip and warp operations
    do in two passes after the resize)."""

    FUSES = (flip, warp)

    def __init__(self, box: np.ndarray, size: int, aug: AugmentConfig, *, fused: bool = False,
                 eval_resize: float = 0.0) -> None:
        if eval_resize > 0:
            super().__init__((size, size), scale=(1.0, 1.0), ratio=(1.0, 1.0))
        else:
            super().__init__((size, size), scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio))
        self.box, self.size, self.aug, self.fused, self.eval_resize = box, size, aug, fused, eval_resize

    def generate_code(self):
        jpg, mem_read, my_range = IMAGE_MODES["jpg"], self.memory_read, Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        crop_window, center_window, flips = _JIT[crop.crop_window], _JIT[crop.center_window], _JIT[flip.flips]
        warp_matrix, matmul3, warp_one = _JIT[warp.warp_matrix], _JIT[core.matmul3], _JIT[warp.warp_one]
        resize_one = _JIT[crop.resize_one]
        addr, aug, size, fill = self.box.ctypes.data, self.aug, self.size, np.array(MEAN_UINT8, dtype=np.uint8)
        (s_lo, s_hi), (r_lo, r_hi), (out_h, out_w) = self.scale, self.ratio, self.output_size
        center, eval_resize, fused = self.eval_resize > 0, self.eval_resize, self.fused
        hp, rp, deg = aug.hflip_p, aug.rotation_p, aug.rotation_degrees
        pp, dist, last = aug.perspective_p, aug.perspective_distortion, float(size - 1)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                flip, active, m = False, False, np.eye(3)
                if center:
                    top, left, h, w = center_window(height, width, eval_resize)
                else:
                    u = uniforms(addr, source_ix)
                    top, left, h, w = crop_window(u, height, width, s_lo, s_hi, r_lo, r_hi)
                    if fused:
                        flip = flips(u, hp)
                        m, active = warp_matrix(u, size, rp, deg, pp, dist)
                if field["mode"] == jpg:
                    k = 8  # DCT scale k/8: the smallest power of two keeping the crop >= the output
                    while k > 1 and h * (k // 2) >= 8 * out_h and w * (k // 2) >= 8 * out_w:
                        k //= 2
                    hs, ws = (height * k + 7) // 8, (width * k + 7) // 8
                    temp = temp_storage[dst_ix]
                    imdecode_c(image_data, temp, np.uint32(height), np.uint32(width), np.uint32(height),
                               np.uint32(width), 0, 0, k, 8, False, False)
                    temp = temp.reshape(-1)[: 3 * hs * ws].reshape(hs, ws, 3)
                    top, left = top * k // 8, left * k // 8
                    h, w = min(max(1, h * k // 8), hs - top), min(max(1, w * k // 8), ws - left)
                else:
                    temp = image_data.reshape(height, width, 3)
                out = destination[dst_ix]
                if active:  # output -> warp -> (un)flip -> crop, one bilinear resampling
                    a = np.eye(3)
                    if flip:
                        a[0, 0], a[0, 2] = -1.0, last
                    a = matmul3(a, m)
                    sx, sy = w / out_w, h / out_h
                    for j in range(3):
                        a[0, j], a[1, j] = sx * a[0, j] + (0.5 * sx - 0.5) * a[2, j], sy * a[1, j] + (0.5 * sy - 0.5) * a[2, j]
                    warp_one(temp[top : top + h, left : left + w], out, a, fill)
                else:
                    resize_one(temp, top, left, h, w, out)
                    if flip:
                        for y in range(out_h):
                            for x in range(out_w // 2):
                                for c in range(3):
                                    out[y, x, c], out[y, out_w - 1 - x, c] = out[y, out_w - 1 - x, c], out[y, x, c]
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode


class SeededOperation(Operation):
    """An augmentation stage (`augmentations.stages`) on the decoded uint8 HWC batch: its numba-compiled
    `ffcv_apply(image, out, uniforms, params)` per sample, `params` its `ffcv_params(size, aug)`."""

    def __init__(self, stage: ModuleType, box: np.ndarray, size: int, aug: AugmentConfig) -> None:
        super().__init__()
        self.stage, self.box, self.params = stage, box, stage.ffcv_params(size, aug)

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)

    def generate_code(self):
        my_range, addr, params = Compiler.get_iterator(), self.box.ctypes.data, self.params
        apply = _JIT[self.stage.ffcv_apply]

        def seeded(images, dst, indices):
            for i in my_range(images.shape[0]):
                apply(images[i], dst[i], uniforms(addr, indices[i]), params)
            return dst

        seeded.is_parallel, seeded.with_indices = True, True
        return seeded
