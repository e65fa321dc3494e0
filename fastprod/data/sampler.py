"""A data-parallel, epoch-seeded, resumable batch order.

Every rank derives the same permutation from (seed, epoch), pads it to a multiple of the world
size and takes every world-th index, so ranks see disjoint shards. Each sample is tagged with
the epoch so its augmentation randomness can be seeded from (seed, epoch, index): the data a step
sees then depends only on the step, not on worker count or on whether the run was resumed.
"""

from __future__ import annotations

import torch


def epoch_batches(
    n: int, batch_size: int, *, epoch: int, seed: int, rank: int, world: int, shuffle: bool, drop_last: bool
) -> list[list[tuple[int, int]]]:
    """This rank's batches for `epoch`, each a list of (sample index, epoch) pairs."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if drop_last or shuffle:
        order += order[: (-len(order)) % world]  # pad so every rank has the same number of samples
    shard = order[rank::world]
    stop = len(shard) - len(shard) % batch_size if drop_last else len(shard)
    return [[(i, epoch) for i in shard[s : s + batch_size]] for s in range(0, stop, batch_size)]
