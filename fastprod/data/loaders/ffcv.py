"""The FFCV backend: a .beton per split (`fastprod write-ffcv`) read by FFCV's numba-compiled pipeline.

Order, sharding and resume: FFCV's own orders (RANDOM / QUASI_RANDOM) are seeded per epoch but
shard with torch's DistributedSampler and cannot start mid-epoch, so this loader replaces the
traversal order with the PIL backend's: `sampler.epoch_batches` for (seed, epoch, rank), flattened
from `batches_done` on. FFCV cuts that order into batches of `batch_size` (all full but the last of an
eval epoch), so a resumed loader yields exactly the remaining batches.

Augmentations (seed sections 1-2): FFCV's own random operators draw from numba's unseeded per-thread
RNG, so the ones here are seeded per sample from (seed, epoch, index) (`fastprod.data.augmentations`,
compiled with numba; the same parameters as the DALI backend's). The epoch is not a compile-time
constant: every operation reads (seed, epoch) from a small array the loader owns, through its address
(one memcpy per batch).

The pipeline (train) is the list of `augmentations.stages`, as module-level FFCV operations
(`ffcv_ops`): the crop is the decoder `SeededRandomResizedCrop`, which decodes the JPEG at a reduced
DCT scale (1/2, 1/4, 1/8) whenever the crop is still at least the output size there, then resizes
bilinearly (under 2x, where bilinear needs no antialiasing; 2-3x cheaper than FFCV's INTER_AREA
resize). By default (`FFCVLoader.FUSE_GEOMETRY`) it also applies the flip and, for samples that draw
rotation or perspective, resamples once from the decoded crop straight to the output through the
composed map instead of resize -> flip -> warp; with it off, the flip and the warp (one bilinear
warp at the output size for rotation + perspective, mean-colour fill) run as separate
`SeededOperation`s -- the reference the fused decoder is tested against. Then cutout and ToTensor;
the uint8 NHWC batch is normalised by torch on the training device. Eval: CenterCropRGBImageDecoder's
window (centre square of side short/eval_resize) through the same decoder, so training without
augmentation equals eval.
An image that could not be read when the .beton was written is stored as a placeholder with ok=0;
the loader drops it from its batch, counts it in `Batch.dropped` and logs it to the quarantine file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fastprod.config import DataConfig
from fastprod.data import augmentations
from fastprod.data.loaders.base import Loaded, Loader
from fastprod.data.manifest import SplitView


def beton_path(cfg: DataConfig, split: str) -> Path:
    return Path(cfg.ffcv_dir or Path(cfg.manifest) / "ffcv") / f"{split}.beton"


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

    def __init__(self, split: SplitView, cfg: DataConfig, **common) -> None:
        super().__init__(split, cfg, **common)
        try:
            from ffcv.fields.basics import IntDecoder
            from ffcv.loader import Loader as FFCV, OrderOption
            from ffcv.transforms import ToTensor

            from fastprod.data.loaders import ffcv_ops
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("data.backend=ffcv needs FFCV: apt-get install libturbojpeg0-dev libopencv-dev; "
                              "pip install 'fastprod[ffcv]'") from err
        from fastprod.data.ffcv_writer import check_beton

        path = beton_path(cfg, split.name)
        check_beton(path, split)
        self.box = np.array([self.seed, 0], dtype=np.int64)  # (seed, epoch), read by the compiled operations
        size, aug = cfg.image_size, cfg.augment
        if self.train:  # the crop is the decoder; each later stage an operation, unless the decoder fuses it
            decoder = ffcv_ops.SeededRandomResizedCrop(self.box, size, aug, fused=self.FUSE_GEOMETRY)
            fused = decoder.FUSES if self.FUSE_GEOMETRY else ()
            ops = [decoder] + [ffcv_ops.SeededOperation(stage, self.box, size, aug)
                               for stage in augmentations.stages(aug)[1:] if stage not in fused]
        else:  # CenterCropRGBImageDecoder's window, decoded and resized as in training
            ops = [ffcv_ops.SeededRandomResizedCrop(self.box, size, aug, eval_resize=cfg.eval_resize)]
        ints = lambda: [IntDecoder(), ToTensor()]  # noqa: E731
        _keep_torch_threads()
        self._ffcv = FFCV(
            str(path), batch_size=self.batch_size, num_workers=max(1, self.workers),
            order=OrderOption.SEQUENTIAL, drop_last=False, os_cache=True, batches_ahead=2,
            pipelines={"image": ops + [ToTensor()], "label": ints(), "index": ints(), "ok": ints()},
        )

    def _load(self) -> Iterator[Loaded]:
        remaining = self._batches()[self.batches_done :]
        if not remaining:
            return
        order = np.array([i for batch in remaining for i, _ in batch], dtype=np.int64)
        self.box[1] = self.epoch
        self._ffcv.traversal_order = _FixedOrder(order)
        self._ffcv.first_traversal_order = order  # FFCV sizes the pass (len) from this
        for images, labels, indices, ok in self._ffcv:
            good = ok.view(-1) == 1
            dropped = int((~good).sum())
            for i in indices.view(-1)[~good].tolist():
                self.quarantine(i, "unreadable when the .beton was written")
            if not bool(good.any()):
                yield Loaded.failed(dropped)
                continue
            images = images[good] if dropped else images
            indices = indices.view(-1)[good].clone()
            # labels from the manifest, not the .beton: a relabelled manifest with the same rows stays right
            labels = torch.as_tensor(self.split.labels[indices.numpy()], dtype=torch.int64)
            yield Loaded(images.permute(0, 3, 1, 2), labels, indices, dropped)
