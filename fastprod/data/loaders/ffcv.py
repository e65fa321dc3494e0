"""The FFCV backend: a .beton per split (`fastprod write-ffcv`) read by FFCV's numba-compiled pipeline.

Order, sharding and resume: FFCV's own orders (RANDOM / QUASI_RANDOM) are seeded per epoch but
shard with torch's DistributedSampler and cannot start mid-epoch, so this loader replaces the
traversal order with the PIL backend's: `sampler.epoch_batches` for (seed, epoch, rank), flattened
from `batches_done` on. FFCV cuts that order into batches of `batch_size` (all full but the last of an
eval epoch), so a resumed loader yields exactly the remaining batches.

Augmentation randomness: FFCV's own random operators draw from numba's unseeded per-thread RNG, so
the ones here are seeded per sample from (seed, epoch, index) (`augparams`, compiled with numba; the
same parameters as the DALI backend's). The epoch is not a compile-time constant: every operation
reads (seed, epoch) from a small array the loader owns, through its address (one memcpy per batch).

Operations (train): `SeededRandomResizedCrop`, a RandomResizedCropRGBImageDecoder that decodes the
JPEG at a reduced DCT scale (1/2, 1/4, 1/8) whenever the crop is still at least the output size there,
then resizes bilinearly (under 2x, where bilinear needs no antialiasing; 2-3x cheaper than FFCV's
INTER_AREA resize). By default (`FFCVLoader.FUSE_GEOMETRY`) it also applies the flip and, for samples
that draw rotation or perspective, resamples once from the decoded crop straight to the output through
the composed map instead of resize -> flip -> warp; with it off, `SeededFlip` and `SeededWarp` (one
bilinear warp at the output size for rotation + perspective, mean-colour fill) run as separate FFCV
operations -- the reference the fused decoder is tested against. Then `SeededCutout` and ToTensor; the
uint8 NHWC batch is normalised by torch on the training device. Eval: CenterCropRGBImageDecoder's
window (centre square of side short/eval_resize) through the same decoder, so training without
augmentation equals eval.
An image that could not be read when the .beton was written is stored as a placeholder with ok=0;
the loader drops it from its batch, counts it in `Batch.dropped` and logs it to the quarantine file.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastprod.config import DataConfig
from fastprod.data.augment import MEAN_UINT8, normalize_on_device
from fastprod.data.loaders import augparams as ap
from fastprod.data.loaders.base import Batch, Loader
from fastprod.data.manifest import SplitView


def beton_path(cfg: DataConfig, split: str) -> Path:
    return Path(cfg.ffcv_dir or Path(cfg.manifest) / "ffcv") / f"{split}.beton"


@functools.lru_cache(maxsize=None)
def _kernels() -> dict:
    """The per-sample work, compiled once per process (each FFCV loader only compiles thin loops around it)."""
    from ffcv.libffcv import ctypes_memcopy
    from numba import njit

    jit = ap.jitted()
    seed_of, n_uniforms = jit["sample_seed"], ap.N_UNIFORMS

    @njit
    def uniforms(addr, index):  # (seed, epoch) from the loader's box at `addr`
        state = np.zeros(2, np.int64)
        ctypes_memcopy(addr, state.ctypes.data, 16)
        np.random.seed(seed_of(state[0], state[1], index))
        u = np.empty(n_uniforms)
        for k in range(n_uniforms):
            u[k] = np.random.random()
        return u

    @njit(fastmath=True, error_model="numpy")
    def warp_one(src, out, m, fill):  # out[y, x] = bilinear src at m @ (x, y, 1); mean colour outside
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

    return {**jit, "uniforms": uniforms, "warp_one": warp_one, "resize_one": resize_one, "cutout_one": cutout_one}


def _operations(box: np.ndarray, cfg: DataConfig):
    """The seeded FFCV operations (defined here so that importing this module does not import ffcv)."""
    from ffcv.fields.rgb_image import IMAGE_MODES, RandomResizedCropRGBImageDecoder
    from ffcv.libffcv import imdecode
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    k = _kernels()
    uniforms, crop_window, flips, warp_matrix = k["uniforms"], k["crop_window"], k["flips"], k["warp_matrix"]
    center_window, matmul3 = k["center_window"], k["_matmul3"]
    cutout_box, warp_one, cutout_one, resize_one = k["cutout_box"], k["warp_one"], k["cutout_one"], k["resize_one"]
    addr, aug, size = box.ctypes.data, cfg.augment, cfg.image_size
    fill = np.array(MEAN_UINT8, dtype=np.uint8)

    class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
        """Random-resized crop from (seed, epoch, index); with `eval_resize` > 0 the centre window instead.
        With `fused`, also the flip and the rotation/perspective warp: a sample that draws a warp is
        resampled once, from the decoded crop straight to the output (what SeededFlip -> SeededWarp
        do in two passes after the resize)."""

        eval_resize, fused = 0.0, False

        def generate_code(self):
            jpg, mem_read, my_range = IMAGE_MODES["jpg"], self.memory_read, Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
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
        def declare_state_and_memory(self, previous_state):
            return replace(previous_state, jit_mode=True), AllocationQuery(previous_state.shape, previous_state.dtype)

    class SeededFlip(_Seeded):
        def generate_code(self):
            my_range, p = Compiler.get_iterator(), aug.hflip_p

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
            my_range = Compiler.get_iterator()
            rp, deg, pp, dist = aug.rotation_p, aug.rotation_degrees, aug.perspective_p, aug.perspective_distortion

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
            my_range = Compiler.get_iterator()
            p, (lo, hi) = aug.cutout_p, aug.cutout_scale

            def cutout(images, dst, indices):
                for i in my_range(images.shape[0]):
                    dst[i] = images[i]
                    top, left, h, w = cutout_box(uniforms(addr, indices[i]), size, p, lo, hi)
                    cutout_one(dst[i], top, left, h, w, fill)
                return dst

            cutout.is_parallel, cutout.with_indices = True, True
            return cutout

    return SeededRandomResizedCrop, SeededFlip, SeededWarp, SeededCutout


def _keep_torch_threads() -> None:
    """FFCV sets torch's intra-op thread count to its worker count on every Loader and epoch (from its
    background thread too); keep the trainer's: FFCV's Compiler then sets only numba's threads."""
    import numba
    from ffcv.pipeline.compiler import Compiler

    if not getattr(Compiler, "_fastprod_numba_only", False):
        def set_num_threads(cls, n: int) -> None:
            cls.num_threads = n
            numba.set_num_threads(n)

        Compiler.set_num_threads = classmethod(set_num_threads)
        Compiler._fastprod_numba_only = True


class _FixedOrder:
    """An FFCV traversal order that returns whatever order the fastprod loader set for this pass."""

    def __init__(self, order: np.ndarray) -> None:
        self.order = order

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order


class FFCVLoader(Loader):
    FUSE_GEOMETRY = True  # crop + resize + flip + rotation/perspective in the decoder (False: op by op)

    def __init__(
        self, split: SplitView, cfg: DataConfig, *, train: bool, rank: int, world: int, seed: int,
        device: torch.device, channels_last: bool, quarantine_log: Path | None,
    ) -> None:
        super().__init__(len(split))
        try:
            from ffcv.fields.basics import IntDecoder
            from ffcv.loader import Loader as FFCV, OrderOption
            from ffcv.transforms import ToTensor
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("data.backend=ffcv needs FFCV: apt-get install libturbojpeg0-dev libopencv-dev; "
                              "pip install 'fastprod[ffcv]'") from err
        from fastprod.data.ffcv_writer import check_beton

        self.split, self.train, self.rank, self.world, self.seed = split, train, rank, world, seed
        self.device, self.channels_last, self.quarantine_log = device, channels_last, quarantine_log
        self.batch_size = cfg.batch_size if train else cfg.eval_batch_size
        path = beton_path(cfg, split.name)
        check_beton(path, split)
        self.box = np.array([seed, 0], dtype=np.int64)  # (seed, epoch), read by the compiled operations
        size, aug = cfg.image_size, cfg.augment
        crop, flip, warp, cutout = _operations(self.box, cfg)
        if train:
            ops = [crop((size, size), scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio))]
            if self.FUSE_GEOMETRY:  # flip + warp inside the decoder: one resampling per sample
                ops[0].fused = True
            else:  # the same augmentation op by op (the reference the fused decoder is tested against)
                ops += [flip()] if aug.hflip_p > 0 else []
                if (aug.rotation_p > 0 and aug.rotation_degrees > 0) or (aug.perspective_p > 0 and aug.perspective_distortion > 0):
                    ops.append(warp())
            ops += [cutout()] if aug.cutout_p > 0 else []
        else:  # CenterCropRGBImageDecoder's window, decoded and resized as in training
            ops = [crop((size, size), scale=(1.0, 1.0), ratio=(1.0, 1.0))]
            ops[0].eval_resize = cfg.eval_resize
        ints = lambda: [IntDecoder(), ToTensor()]  # noqa: E731
        _keep_torch_threads()
        self._ffcv = FFCV(
            str(path), batch_size=self.batch_size, num_workers=max(1, min(cfg.workers, os.cpu_count() or 1)),
            order=OrderOption.SEQUENTIAL, drop_last=False, os_cache=True, batches_ahead=2,
            pipelines={"image": ops + [ToTensor()], "label": ints(), "index": ints(), "ok": ints()},
        )

    def _quarantine(self, index: int) -> None:
        record = {"path": self.split.paths[index], "index": index, "reason": "unreadable when the .beton was written"}
        warnings.warn(f"quarantined at load time: {record['path']}: {record['reason']}")
        if self.quarantine_log is not None:
            with open(self.quarantine_log, "a") as f:
                f.write(json.dumps(record) + "\n")

    def __iter__(self):
        remaining = self._batches()[self.batches_done :]
        if not remaining:
            return
        order = np.array([i for batch in remaining for i, _ in batch], dtype=np.int64)
        self.box[1] = self.epoch
        self._ffcv.traversal_order = _FixedOrder(order)
        self._ffcv.first_traversal_order = order  # FFCV sizes the pass (len) from this
        for images, labels, indices, ok in self._ffcv:
            self.batches_done += 1
            good = ok.view(-1) == 1
            dropped = int((~good).sum())
            self._dropped(dropped)
            for i in indices.view(-1)[~good].tolist():
                self._quarantine(i)
            if not bool(good.any()):
                continue
            images = images[good] if dropped else images
            indices = indices.view(-1)[good].clone()
            # labels from the manifest, not the .beton: a relabelled manifest with the same rows stays right
            labels = torch.as_tensor(self.split.labels[indices.numpy()], dtype=torch.int64)
            yield Batch(
                normalize_on_device(images.permute(0, 3, 1, 2), self.device, self.channels_last),
                labels.to(self.device, non_blocking=True), indices, dropped,
            )
