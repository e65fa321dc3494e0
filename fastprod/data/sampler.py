"""A data-parallel, epoch-seeded, resumable batch order, uniform or class-aware (`data.sampler`).

Every rank derives the same epoch draw from (seed, epoch), pads it to a multiple of the world size
and takes every world-th position, so ranks see disjoint shards of the draw. Each sample is tagged
with the epoch so its augmentation randomness can be seeded from (seed, epoch, index): the data a
step sees then depends only on the step, not on worker count or on whether the run was resumed.

The draw (issue 16, class-aware sampling for the long tail) is one of:
- `uniform` (the seed's): a permutation of the split, every image once per epoch.
- `sqrt`, `balanced`: as many samples as the split has images, class c drawn in proportion to
  n_c^0.5 or equally (n_c: its training images);
- `repeat_factor` (LVIS, Gupta et al. 2019): image i of class c is repeated r_c = max(1, sqrt(t / f_c))
  times per epoch in expectation, f_c = n_c / N the class's fraction of the images and
  t = `data.repeat_threshold`; the epoch has round(sum_c n_c r_c) samples, LVIS's expected length.
The class-aware draws are stratified: class c's count is its expectation E_c rounded down or up
(systematic rounding with one uniform offset per epoch: exactly E_c on average, and the counts sum to
the epoch length), and within the class its images are taken in a random order, cycling, so each is
drawn floor or ceil of E_c / n_c times. For repeat_factor that is LVIS's stochastic rounding of r_c
per image, with the epoch length fixed (the SGDR schedule is stepped per iteration) and a smaller
spread. The draw is vectorised (numpy/torch, no per-sample Python); only the batches handed back
are Python lists.
"""

from __future__ import annotations

import numpy as np
import torch

from fastprod.config import SAMPLERS, ConfigError


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class ClassSampler:
    """A class-aware epoch draw (`sqrt`, `balanced` or `repeat_factor`) over a training split's labels."""

    def __init__(self, labels: np.ndarray, kind: str, repeat_threshold: float) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0 or labels.min() < 0:
            raise ConfigError(f"data.sampler: {kind} needs a label on every training image "
                              f"({int((labels < 0).sum())} of {labels.size} are unlabelled)")
        counts = np.bincount(labels)
        n = labels.size
        if kind == "sqrt":
            share, self.length = np.sqrt(counts), n
        elif kind == "balanced":
            share, self.length = (counts > 0).astype(np.float64), n
        elif kind == "repeat_factor":
            share = counts * np.maximum(1.0, np.sqrt(repeat_threshold * n / np.maximum(counts, 1)))
            self.length = int(round(share.sum()))
        else:
            raise ConfigError(f"data.sampler: {kind!r} is not a class-aware sampler ({', '.join(SAMPLERS[1:])})")
        self.expected = share * (self.length / share.sum())  # float64 samples of each class per epoch
        self._cumulative = np.concatenate(([0.0], np.cumsum(self.expected)))
        self._cumulative[-1] = self.length  # float rounding aside, so the class counts sum to exactly `length`
        self._counts = counts
        self._starts = np.cumsum(counts) - counts  # where each class begins in the grouped order
        self._labels = labels

    def draw(self, epoch: int, seed: int) -> np.ndarray:
        """The epoch's `length` sample indices, in their (shuffled) order."""
        g = _generator(seed, epoch)
        offset = torch.rand((), generator=g, dtype=torch.float64).item()
        edges = np.floor(self._cumulative + offset).astype(np.int64)  # edges[0] = 0, edges[-1] = length
        quota = np.diff(edges)  # floor or ceil of each class's expectation, exactly it on average
        mixed = torch.randperm(self._labels.size, generator=g).numpy()
        grouped = mixed[np.argsort(self._labels[mixed], kind="stable")]  # by class, random within each
        cls = np.repeat(np.arange(quota.size), quota)
        within = np.arange(self.length) - np.repeat(edges[:-1], quota)
        picks = grouped[self._starts[cls] + within % self._counts[cls]]
        return picks[torch.randperm(self.length, generator=g).numpy()]


def epoch_batches(
    n: int, batch_size: int, *, epoch: int, seed: int, rank: int, world: int, shuffle: bool, drop_last: bool,
    sampler: ClassSampler | None = None,
) -> list[list[tuple[int, int]]]:
    """This rank's batches for `epoch`, each a list of (sample index, epoch) pairs. `sampler` (training)
    draws the epoch instead of the uniform permutation."""
    if sampler is not None:
        order = sampler.draw(epoch, seed)
    elif shuffle:
        order = torch.randperm(n, generator=_generator(seed, epoch)).numpy()
    else:
        order = np.arange(n)
    if drop_last or shuffle or sampler is not None:  # pad so every rank has the same number of samples
        order = np.concatenate((order, order[: (-len(order)) % world]))
    shard = order[rank::world]
    stop = len(shard) - len(shard) % batch_size if drop_last else len(shard)
    pairs = [(i, epoch) for i in shard[:stop].tolist()]
    return [pairs[s : s + batch_size] for s in range(0, stop, batch_size)]
