"""What every data backend yields, how it keeps its place in an epoch, and how its batches reach the device.

A backend's `_load()` produces `Loaded` batches (uint8 pixels on the host) in the seeded order of the
current pass; the base `Loader` counts them, records failures and hands them out as `Batch`es on the
training device through `DeviceFeed` (the input side of seed sections 1-2: normalised, channels_last;
on CUDA from pinned memory, the next batch prefetched on a side stream while the caller's step runs).
"""

from __future__ import annotations

import json
import os
import warnings
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from fastprod.config import DataConfig
from fastprod.data.augment import Normalize
from fastprod.data.manifest import SplitView
from fastprod.data.sampler import ClassSampler, epoch_batches


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float, normalised, on the training device
    labels: torch.Tensor  # [B] int64 on the training device
    indices: torch.Tensor  # [B] int64 sample indices into the split (CPU)
    dropped: int = 0  # samples of this batch that failed to load (quarantined at run time)


class Loaded(NamedTuple):
    """A batch as a backend loads it: uint8 [B, 3, H, W] images on the host (DALI on the GPU: already
    normalised on the device), int64 labels and indices on the CPU; all three None when every sample
    failed (such a batch is counted, never yielded)."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    indices: torch.Tensor | None
    dropped: int

    @classmethod
    def failed(cls, dropped: int) -> Loaded:
        return cls(None, None, None, dropped)


@dataclass
class Quarantine:
    """The run's load-time quarantine: an image that fails to load is dropped from its batch with a warning
    and a JSON line in `log`; the epoch goes on. Small and picklable, for DataLoader workers."""

    paths: list[str]
    log: Path | None

    def __call__(self, index: int, reason: Exception | str) -> None:
        if isinstance(reason, Exception):
            reason = str(reason) or type(reason).__name__
        record = {"path": self.paths[index], "index": index, "reason": reason}
        warnings.warn(f"quarantined at load time: {record['path']}: {reason}")
        if self.log is not None:
            with open(self.log, "a") as f:  # one short append per line: atomic across workers
                f.write(json.dumps(record) + "\n")


class DeviceFeed:
    """Loaded batches -> `Batch`es on the training device, normalised with constants made there once.

    On CUDA, a batch's copy (from pinned host memory, non_blocking) and normalisation are queued on a side
    stream as soon as it is loaded, so they overlap the step the caller runs on the batch before it
    (`lookahead` 1); before a batch is handed out the caller's stream waits for its upload (`wait`) and
    its tensors are recorded on that stream (`ready`), so the allocator does not reuse their memory for a
    later upload while the step still reads them. Elsewhere a batch is normalised when it is loaded."""

    def __init__(self, device: torch.device, channels_last: bool) -> None:
        self.device, self.normalize = device, Normalize(device, channels_last)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.lookahead = 0 if self.stream is None else 1
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(device))  # the constants exist before it reads them

    def _pinned(self, host: torch.Tensor) -> torch.Tensor:
        return host if self.stream is None or host.is_pinned() else host.pin_memory()

    def _upload(self, loaded: Loaded) -> Batch:
        images = loaded.images
        if images.dtype == torch.uint8:  # host pixels (DALI on the GPU hands over normalised floats)
            images = self.normalize(self._pinned(images))
        labels = self._pinned(loaded.labels).to(self.device, non_blocking=True)
        return Batch(images, labels, loaded.indices, loaded.dropped)

    def start(self, loaded: Loaded) -> Batch:
        """Queue `loaded`'s upload (on CUDA, on the side stream: the result is in flight)."""
        if self.stream is None:
            return self._upload(loaded)
        with torch.cuda.stream(self.stream):
            return self._upload(loaded)

    def wait(self) -> None:
        """The caller's stream waits for every upload queued so far."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def ready(self, batch: Batch) -> Batch:
        """`batch`, its memory in use on the caller's stream (call after `wait`)."""
        if self.stream is not None:
            stream = torch.cuda.current_stream(self.device)
            batch.images.record_stream(stream)
            batch.labels.record_stream(stream)
        return batch


class Loader(ABC):
    """Base: the settings every backend shares, this rank's seeded sample order, the epoch and the in-epoch
    position (so a run resumes at the exact next batch), failure counts, the quarantine, and the way to the
    device. A backend implements `_load()`: the batches of the current pass, from `batches_done` on."""

    def __init__(
        self, split: SplitView, cfg: DataConfig, *, train: bool, rank: int, world: int, seed: int,
        device: torch.device, channels_last: bool, quarantine_log: Path | None,
    ) -> None:
        self.split, self.num_samples = split, len(split)
        self.batch_size = cfg.batch_size if train else cfg.eval_batch_size
        self.train = train  # shuffle (or draw with `data.sampler`), and drop the last partial batch
        self.sampler = ClassSampler(split.labels, cfg.sampler, cfg.repeat_threshold) \
            if train and cfg.sampler != "uniform" else None  # evaluation: every image once, in order
        self.rank, self.world, self.seed = rank, world, seed
        self.device, self.channels_last = device, channels_last
        self.workers = min(cfg.workers, os.cpu_count() or 1)  # processes or threads that load and augment
        self.quarantine = Quarantine(split.paths, quarantine_log)
        self._feed = DeviceFeed(device, channels_last)
        self.epoch = 0
        self.batches_done = 0
        self.failures = 0  # samples of this pass over the split that failed to load (quarantined at run time)
        self.failures_total = 0  # ... over every pass of the run

    def _dropped(self, count: int) -> None:
        """Count samples dropped from a batch, including batches whose every sample failed (never yielded)."""
        self.failures += count
        self.failures_total += count

    def _batches(self) -> list[list[tuple[int, int]]]:
        """This rank's batches of the current epoch, in the seeded order every backend shares."""
        return epoch_batches(
            self.num_samples, self.batch_size, epoch=self.epoch, seed=self.seed, rank=self.rank,
            world=self.world, shuffle=self.train, drop_last=self.train, sampler=self.sampler,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self._batches())

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batches_done, self.failures = epoch, 0, 0

    def rewind(self) -> None:
        """Start the current epoch over (evaluation loaders are iterated whole, again and again)."""
        self.batches_done, self.failures = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "failures": self.failures,
                "failures_total": self.failures_total}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self.failures, self.failures_total = int(state.get("failures", 0)), int(state.get("failures_total", 0))

    def close(self) -> None:
        """Release what the backend keeps between passes (the PIL backend's worker processes)."""

    @abstractmethod
    def _load(self) -> Iterator[Loaded]:
        """The batches of the current pass, from `batches_done` on, in order."""

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch, from `batches_done` on (one pass at a time). `batches_done` and the
        failure counts advance as batches are handed out, not as they are loaded or prefetched, so a pass
        broken off and resumed (`state_dict`) continues with the first batch the caller did not get."""
        ahead: deque[Batch | int] = deque()  # in order: batches on their way to the device, failed batches' drops
        for loaded in self._load():
            if loaded.images is None:  # counted in order: after the batches still ahead of it
                if ahead:
                    ahead.append(loaded.dropped)
                else:
                    yield from self._hand_out(loaded.dropped)
                continue
            self._feed.wait()  # for the batches already in `ahead`, not for the one queued next
            ahead.append(self._feed.start(loaded))
            while len(ahead) > self._feed.lookahead:
                yield from self._hand_out(ahead.popleft())
        self._feed.wait()
        while ahead:
            yield from self._hand_out(ahead.popleft())

    def _hand_out(self, item: Batch | int) -> Iterator[Batch]:
        """Count a batch (a failed one is its count of dropped samples) and yield it if it has images."""
        self.batches_done += 1
        if isinstance(item, int):
            self._dropped(item)
        else:
            self._dropped(item.dropped)
            yield self._feed.ready(item)
