"""The DALI backend: fused crop-decode and the augmentations as a DALI pipeline, GPU or CPU.

Order, sharding and resume are the PIL backend's: this rank's batches for the epoch come from
`sampler.epoch_batches` and are fed to the pipeline through `fn.external_source` in that order, so a
resumed loader just feeds the batches from `batches_done` on. Augmentation parameters (seed sections
1-2) are drawn per sample from (seed, epoch, index) in Python (`fastprod.data.augmentations`) and fed
alongside the encoded bytes, because DALI's own random operators cannot be seeded per sample; this is
also why the crop is `fn.decoders.image_slice` with an explicit window rather than
`fn.decoders.image_random_crop` -- it is the same fused region-of-interest decode (only the window's
rows/MCUs are decoded).

Pipeline (train): the list of `augmentations.stages`, each its `dali_feed` columns and its part of
the graph (`dali_apply`): image_slice (decode only the crop window; `mixed` = nvJPEG on the GPU,
`cpu` = libjpeg-turbo, fast IDCT) -> resize to image_size (antialiased) -> flip -> one
`experimental.warp_perspective` at the output size for rotation and perspective together (one
resampling, only on the samples that draw either) -> `erase` (cutout, mean-colour fill); then on the
GPU `crop_mirror_normalize` to normalised float; on the CPU the uint8 batch is normalised by torch on
the training device. Eval: the centre window (short side / eval_resize) decoded and resized to
image_size.

Decoding: JPEGs go to DALI's decoder as they are. Anything else (PNG, palette PNGs with transparency
behind .jpg names, BMP, ...) is decoded by `images.load_rgb` exactly as the PIL backend does (alpha
over white) and passed on as an uncompressed PPM. Files already in the run's quarantine log are
skipped up front (the prepared manifest already excludes what `prepare` quarantined). A file that
fails at run time: in Python (read, header, PIL) it is quarantined and dropped from its batch; if
DALI's decoder fails, that batch is decoded again per sample with PIL (bad files quarantined and
dropped, counted in `Batch.dropped`) on a fresh pipeline, and the epoch goes on.
"""

from __future__ import annotations

import io
import json
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastprod.config import DataConfig
from fastprod.data import augmentations
from fastprod.data.augment import MEAN, STD
from fastprod.data.augmentations import crop
from fastprod.data.augmentations.core import DALIGraph
from fastprod.data.images import MAX_ASPECT, MAX_PIXELS, ImageError, check_geometry, load_rgb
from fastprod.data.loaders.base import Loaded, Loader
from fastprod.data.manifest import SplitView

_JPEG_MAGIC = b"\xff\xd8\xff"


def _import_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("data.backend=dali needs NVIDIA DALI: pip install 'fastprod[dali]'") from err
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import feed_ndarray
    return fn, pipeline_def, types, feed_ndarray


def read_quarantined(log: Path | None, paths: list[str]) -> set[int]:
    """Indices of `paths` already listed in a run-time quarantine log (skipped up front)."""
    if log is None or not Path(log).is_file():
        return set()
    bad = set()
    for line in Path(log).read_text().splitlines():
        try:
            rec = json.loads(line)
            i = int(rec["index"])
        except (ValueError, KeyError, TypeError):
            continue
        if 0 <= i < len(paths) and paths[i] == rec.get("path"):
            bad.add(i)
    return bad


def _ppm(image: Image.Image) -> np.ndarray:
    buf = io.BytesIO()
    image.save(buf, format="PPM")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


class _Pending:
    __slots__ = ("spec", "indices", "labels", "dropped")

    def __init__(self, spec, indices, labels, dropped):
        self.spec, self.indices, self.labels, self.dropped = spec, indices, labels, dropped


class DALILoader(Loader):
    def __init__(self, split: SplitView, cfg: DataConfig, **common) -> None:
        super().__init__(split, cfg, **common)
        self._fn, self._pipeline_def, self._types, self._feed_ndarray = _import_dali()
        self.cfg = cfg
        self.gpu = self.device.type == "cuda"
        self.device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if self.gpu else None
        self.known_bad = read_quarantined(self.quarantine.log, split.paths)
        # the pipeline: its stages in order, the first (the crop) decoding; fed the encoded bytes, then each
        # stage's columns
        self.stages = augmentations.stages(cfg.augment) if self.train else [crop]
        self._columns = 1 + sum(stage.DALI_COLUMNS for stage in self.stages)
        self._conditionals = any(getattr(stage, "DALI_CONDITIONAL", False) for stage in self.stages)

    # ---- feeding -------------------------------------------------------------------------------
    def _quarantine(self, index: int, err: Exception) -> None:
        self.known_bad.add(index)
        self.quarantine(index, err)

    def _encoded(self, index: int, with_pil: bool) -> tuple[np.ndarray, int, int]:
        """(bytes for DALI, height, width); raises ImageError/OSError for an unusable file."""
        path = self.split.paths[index]
        if not with_pil:
            with open(path, "rb") as f:
                data = f.read()
            if data[:3] == _JPEG_MAGIC:
                try:
                    with Image.open(io.BytesIO(data)) as im:  # header only
                        width, height = im.size
                    check_geometry(width, height, MAX_ASPECT, MAX_PIXELS)
                    return np.frombuffer(data, dtype=np.uint8), height, width
                except Exception:  # noqa: BLE001 - unreadable header or refused geometry: PIL says why below
                    pass
        image = load_rgb(path)
        return _ppm(image), image.height, image.width

    def _prepare(self, spec: tuple[list[int], int, bool]) -> tuple[_Pending, tuple | None]:
        indices, epoch, with_pil = spec
        cfg, aug, size = self.cfg, self.cfg.augment, self.cfg.image_size
        cols: tuple[list, ...] = tuple([] for _ in range(self._columns))
        kept, dropped = [], 0
        for index in indices:
            if index in self.known_bad:
                dropped += 1
                continue
            try:
                data, height, width = self._encoded(index, with_pil)
            except (ImageError, OSError) as err:
                self._quarantine(index, err)
                dropped += 1
                continue
            if self.train:
                u = augmentations.uniforms(self.seed, epoch, index)
                values = [v for stage in self.stages for v in stage.dali_feed(u, height, width, size, aug)]
            else:
                values = crop.dali_eval_feed(height, width, cfg.eval_resize)
            for col, value in zip(cols, (data, *values)):
                col.append(value)
            kept.append(index)
        labels = torch.as_tensor(self.split.labels[kept], dtype=torch.int64)
        return _Pending(spec, torch.tensor(kept, dtype=torch.int64), labels, dropped), (cols if kept else None)

    # ---- the pipeline --------------------------------------------------------------------------
    def _build(self, todo: deque, pending: deque):
        fn, types = self._fn, self._types
        dali = DALIGraph(fn, types, self.cfg.image_size, self.gpu)

        def source():
            while todo:
                rec, cols = self._prepare(todo.popleft())
                pending.append(rec)
                if cols is not None:
                    return cols
            raise StopIteration

        @self._pipeline_def(batch_size=self.batch_size, num_threads=max(1, self.workers), device_id=self.device_id,
                            prefetch_queue_depth=2, enable_conditionals=self._conditionals)
        def graph():
            fed = fn.external_source(source=source, num_outputs=self._columns, batch=True)
            img, at = fed[0], 1
            for stage in self.stages:
                img = stage.dali_apply(dali, img, fed[at : at + stage.DALI_COLUMNS])
                at += stage.DALI_COLUMNS
            if self.gpu:  # normalise where the pixels already are
                img = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC",
                                               mean=[255 * m for m in MEAN], std=[255 * s for s in STD])
            return img

        pipe = graph()
        pipe.build()
        return pipe

    def _to_torch(self, out) -> torch.Tensor:
        tl = out[0]
        if self.gpu:
            tensor = tl.as_tensor()
            images = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
            self._feed_ndarray(tensor, images, cuda_stream=torch.cuda.current_stream(self.device))
            images = images.permute(0, 3, 1, 2)
            return images if self.channels_last else images.contiguous()
        return torch.from_numpy(np.array(tl.as_tensor())).permute(0, 3, 1, 2)  # uint8, normalised on the device

    def _load(self) -> Iterator[Loaded]:
        todo = deque((([i for i, _ in b], b[0][1], False) for b in self._batches()[self.batches_done:]))
        pending: deque[_Pending] = deque()
        pipe = self._build(todo, pending) if todo else None
        while pipe is not None:
            try:
                out = pipe.run()
            except StopIteration:
                break
            except Exception as err:  # noqa: BLE001 - DALI reports a failed decode as RuntimeError
                yield from self._skip_empty(pending)
                if not pending:
                    raise
                failed = pending.popleft()
                if failed.spec[2]:  # already decoded with PIL: not a decoding problem
                    raise
                warnings.warn(f"DALI failed on a batch ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__}); decoding it with PIL")
                todo.extendleft(reversed([(failed.spec[0], failed.spec[1], True)] + [p.spec for p in pending]))
                pending.clear()
                del pipe
                pipe = self._build(todo, pending)
                continue
            yield from self._skip_empty(pending)
            rec = pending.popleft()
            yield Loaded(self._to_torch(out), rec.labels, rec.indices, rec.dropped)
        for rec in pending:  # batches whose every sample was dropped
            yield Loaded.failed(rec.dropped)

    def _skip_empty(self, pending: deque[_Pending]) -> Iterator[Loaded]:
        """Pass on the batches at the front whose every sample was dropped (DALI never ran them)."""
        while pending and pending[0].indices.numel() == 0:
            yield Loaded.failed(pending.popleft().dropped)
