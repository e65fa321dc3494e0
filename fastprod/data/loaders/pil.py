"""The baseline backend: PIL decode + torchvision augmentations in DataLoader worker processes.

Each sample's augmentation is seeded from (seed, epoch, index), so results do not depend on the
number of workers and a resumed run sees exactly the batches an uninterrupted one would. An image
that fails to load is logged to the run's quarantine file and dropped from its batch; the epoch
goes on.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fastprod.config import DataConfig
from fastprod.data.augment import eval_ops, normalize_on_device
from fastprod.data.augmentations import train_ops
from fastprod.data.images import ImageError, load_rgb
from fastprod.data.loaders.base import Batch, Loader
from fastprod.data.manifest import SplitView


class _Images(Dataset):
    def __init__(self, split: SplitView, transform: v2.Compose, seed: int, quarantine_log: Path | None) -> None:
        self.paths, self.labels = split.paths, split.labels
        self.transform, self.seed, self.quarantine_log = transform, seed, quarantine_log

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        try:
            image = load_rgb(self.paths[index])
        except (ImageError, OSError) as err:
            self._quarantine(index, err)
            return None
        torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        return self.transform(image), int(self.labels[index]), index

    def _quarantine(self, index: int, err: Exception) -> None:
        record = {"path": self.paths[index], "index": index, "reason": str(err) or type(err).__name__}
        warnings.warn(f"quarantined at load time: {record['path']}: {record['reason']}")
        if self.quarantine_log is not None:
            with open(self.quarantine_log, "a") as f:  # one short append per line: atomic across workers
                f.write(json.dumps(record) + "\n")


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]:
    """Stack the samples that loaded; the last element counts those that did not (all of them: no images)."""
    good = [it for it in items if it is not None]
    if not good:
        return None, None, None, len(items)
    images, labels, indices = zip(*good)
    return torch.stack(images), torch.tensor(labels), torch.tensor(indices), len(items) - len(good)


class PILLoader(Loader):
    def __init__(
        self, split: SplitView, cfg: DataConfig, *, train: bool, rank: int, world: int, seed: int,
        device: torch.device, channels_last: bool, quarantine_log: Path | None,
    ) -> None:
        super().__init__(len(split))
        ops = train_ops(cfg.image_size, cfg.augment) if train else eval_ops(cfg.image_size, cfg.eval_resize)
        self.dataset = _Images(split, v2.Compose(ops), seed, quarantine_log)
        self.batch_size = cfg.batch_size if train else cfg.eval_batch_size
        self.train, self.rank, self.world, self.seed = train, rank, world, seed
        self.device, self.channels_last = device, channels_last
        self.workers = min(cfg.workers, os.cpu_count() or 1)

    def __iter__(self):
        remaining = self._batches()[self.batches_done :]
        loader = DataLoader(
            self.dataset, batch_sampler=remaining, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if self.workers else None,
        )
        for images, labels, indices, dropped in loader:
            self.batches_done += 1
            self._dropped(dropped)
            if images is None:
                continue
            yield Batch(
                normalize_on_device(images, self.device, self.channels_last),
                labels.to(self.device, non_blocking=True), indices, dropped,
            )
