"""The FFCV backend's seeded operations (seed sections 1-2: augmentations), importable and testable on their own.

Importing this module imports FFCV (`fastprod.data.loaders.ffcv` does so only when an FFCV loader is
built). Every operation draws its sample's parameters from (seed, epoch, index): the seed and the
epoch come from a 2-element int64 array the loader owns (`box`, read through its address, so a new
epoch needs no recompilation), the index from FFCV. The per-sample work is numba-compiled
(`augparams.jitted()` and the kernels below).

- `SeededRandomResizedCrop`: the decoder; random-resized crop (or, with `eval_resize` > 0, the eval
  centre window) decoded at a reduced DCT scale and resized bilinearly; with `fused`, the flip and the
  rotation/perspective warp too, in one resampling.
- `SeededFlip`, `SeededWarp`, `SeededCutout`: the same augmentations op by op (the reference the
  fused decoder is tested against), and cutout.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import ctypes_memcopy, imdecode
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from numba import njit

from fastprod.config import AugmentConfig
from fastprod.data.augment import MEAN_UINT8
from fastprod.data.loaders import augparams as ap

_JIT = ap.jitted()
_sample_seed, _N_UNIFORMS = _JIT["sample_seed"], ap.N_UNIFORMS


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


@njit(fastmath=True, error_model="numpy")
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


@njit(fastmath=True, error_model="numpy")
def resize_one(src, top, left, h, w, out):
    """Bilinear (pixel-centre aligned) resize of src[top:top+h, left:left+w] to out; the decoder's DCT
    scaling keeps the reduction under 2x, where bilinear needs no antialiasing filter."""
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


@njit
def cutout_one(out, top, left, h, w, fill):
    for y in range(top, top + h):
        for x in range(left, left + w):
            for c in range(3):
                out[y, x, c] = fill[c]


class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
    """Random-resized crop from (seed, epoch, index); with `eval_resize` > 0 the centre window instead.
    With `fused`, also the flip and the rotation/perspective warp: a sample that draws a warp is
    resampled once, from the decoded crop straight to the output (what SeededFlip -> SeededWarp
    do in two passes after the resize)."""

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
        crop_window, center_window, flips = _JIT["crop_window"], _JIT["center_window"], _JIT["flips"]
        warp_matrix, matmul3 = _JIT["warp_matrix"], _JIT["_matmul3"]
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


class _Seeded(Operation):
    """An in-place-shaped seeded operation on the decoded uint8 HWC batch."""

    def __init__(self, box: np.ndarray, size: int, aug: AugmentConfig) -> None:
        super().__init__()
        self.box, self.size, self.aug = box, size, aug

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)


class SeededFlip(_Seeded):
    def generate_code(self):
        my_range, p, addr, flips = Compiler.get_iterator(), self.aug.hflip_p, self.box.ctypes.data, _JIT["flips"]

        def flip(images, dst, indices):
            for i in my_range(images.shape[0]):
                if flips(uniforms(addr, indices[i]), p):
                    dst[i] = images[i, :, ::-1]
                else:
                    dst[i] = images[i]
            return dst

        flip.is_parallel, flip.with_indices = True, True
        return flip


class SeededWarp(_Seeded):
    """Rotation then perspective as one output -> input map, bilinear, constant mean-colour border."""

    def generate_code(self):
        my_range, aug, size, addr = Compiler.get_iterator(), self.aug, self.size, self.box.ctypes.data
        rp, deg, pp, dist = aug.rotation_p, aug.rotation_degrees, aug.perspective_p, aug.perspective_distortion
        warp_matrix, fill = _JIT["warp_matrix"], np.array(MEAN_UINT8, dtype=np.uint8)

        def warp(images, dst, indices):
            for i in my_range(images.shape[0]):
                m, active = warp_matrix(uniforms(addr, indices[i]), size, rp, deg, pp, dist)
                if active:
                    warp_one(images[i], dst[i], m, fill)
                else:
                    dst[i] = images[i]
            return dst

        warp.is_parallel, warp.with_indices = True, True
        return warp


class SeededCutout(_Seeded):
    def generate_code(self):
        my_range, size, addr = Compiler.get_iterator(), self.size, self.box.ctypes.data
        p, (lo, hi) = self.aug.cutout_p, self.aug.cutout_scale
        cutout_box, fill = _JIT["cutout_box"], np.array(MEAN_UINT8, dtype=np.uint8)

        def cutout(images, dst, indices):
            for i in my_range(images.shape[0]):
                dst[i] = images[i]
                top, left, h, w = cutout_box(uniforms(addr, indices[i]), size, p, lo, hi)
                cutout_one(dst[i], top, left, h, w, fill)
            return dst

        cutout.is_parallel, cutout.with_indices = True, True
        return cutout
