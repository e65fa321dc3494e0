"""The baseline backend: PIL decode + torchvision augmentations in DataLoader worker processes.

Each sample's augmentation is seeded from (seed, epoch, index), so results do not depend on the
number of workers and a resumed run sees exactly the batches an uninterrupted one would. An image
that fails to load is logged to the run's quarantine file and dropped from its batch; the epoch
goes on.

One DataLoader per loader, made on the first pass, serves every pass with the same (persistent)
worker processes: its batch sampler (`_Pass`) is handed the batches of each pass (the seeded order
from `batches_done` on) before it starts, so epochs, evaluation passes, passes broken off early and
resumed positions need no new workers. Workers stack a batch straight into shared memory in
channels_last layout (PIL's pixel order, and the trainer's), so nothing is copied on the way.
`close()` stops the workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision.transforms import v2

from fastprod.config import DataConfig
from fastprod.data.augment import eval_ops
from fastprod.data.augmentations import train_ops
from fastprod.data.images import ImageError, load_rgb
from fastprod.data.loaders.base import Loaded, Loader, Quarantine
from fastprod.data.manifest import SplitView


class _Images(Dataset):
    def __init__(self, split: SplitView, transform: v2.Compose, seed: int, quarantine: Quarantine) -> None:
        self.paths, self.labels = split.paths, split.labels
        self.transform, self.seed, self.quarantine = transform, seed, quarantine

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        index, epoch = key
        try:
            image = load_rgb(self.paths[index])
        except (ImageError, OSError) as err:
            self.quarantine(index, err)
            return None
        # torchvision draws from the default CPU generator; torch.manual_seed would also seed every
        # accelerator's generator (~0.25 ms a sample, and the trainer's CUDA RNG when workers=0)
        torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        return self.transform(image), int(self.labels[index]), index


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """[B, 3, H, W] uint8 in channels_last memory (a straight copy of PIL's HWC pixels, and the layout the
    trainer wants); in a worker, in the shared memory the batch travels through anyway."""
    channels, height, width = images[0].shape
    shape = (len(images), height, width, channels)
    if get_worker_info() is None:
        out = torch.empty(shape, dtype=torch.uint8)
    else:  # as torch's default_collate does (share_memory_() would copy: +8% worker CPU)
        out = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(math.prod(shape))).view(shape)
    torch.stack([image.permute(1, 2, 0) for image in images], out=out)
    return out.permute(0, 3, 1, 2)


def _collate(items: list[tuple[torch.Tensor, int, int] | None]) -> Loaded:
    """Stack the samples that loaded; `dropped` counts those that did not (all of them: no images)."""
    good = [it for it in items if it is not None]
    if not good:
        return Loaded.failed(len(items))
    images, labels, indices = zip(*good)
    return Loaded(_stack(images), torch.tensor(labels), torch.tensor(indices), len(items) - len(good))


class _Pass:
    """The persistent DataLoader's batch sampler: the batches of the pass about to start."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)


class PILLoader(Loader):
    def __init__(self, split: SplitView, cfg: DataConfig, **common) -> None:
        super().__init__(split, cfg, **common)
        ops = train_ops(cfg.image_size, cfg.augment) if self.train else eval_ops(cfg.image_size, cfg.eval_resize)
        self.dataset = _Images(split, v2.Compose(ops), self.seed, self.quarantine)
        self._pass = _Pass()
        self._dataloader: DataLoader | None = None

    def _load(self) -> Iterator[Loaded]:
        self._pass.batches = self._batches()[self.batches_done :]
        if self._dataloader is None:
            self._dataloader = DataLoader(
                self.dataset, batch_sampler=self._pass, num_workers=self.workers, collate_fn=_collate,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers else None,
            )
        yield from self._dataloader

    def close(self) -> None:
        """Stop the worker processes (otherwise they live as long as the loader); a later pass starts new ones."""
        if self._dataloader is not None and self._dataloader._iterator is not None:
            self._dataloader._iterator._shutdown_workers()  # what the iterator runs when it is garbage-collected
        self._dataloader = None
