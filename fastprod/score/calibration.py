"""Calibration views for an int8 engine (seed section 5, multi-scale TTA and scoring: a quantised engine
is calibrated on the TTA views it will score):

    fastprod export ... --precision int8 --calibration DATASET_OR_IMAGES ... [--calibration-split train]
                        [--calibration-images 128]

`calibration_views` draws `--calibration-images` images (seeded) from a prepared dataset's split or from
image files and folders, and returns all their views, so the activation ranges a backend calibrates
(onnxruntime: fastprod/score/backends/onnxruntime.py) match what scoring will feed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastprod.data.images import ImageError, load_rgb
from fastprod.score.items import items_from_manifest, items_from_paths
from fastprod.score.tta import Views, make_views


def calibration_views(sources: list[str | Path], split: str, count: int, views: Views, seed: int = 0) -> torch.Tensor:
    """uint8 [K * V, 3, S, S]: the TTA views of `count` images drawn (seeded) from a prepared dataset's split
    or from image files/folders; undecodable images are skipped."""
    first = Path(sources[0])
    items = (items_from_manifest(first, split) if len(sources) == 1 and (first / "manifest.parquet").is_file()
             else items_from_paths(list(sources)))
    order = np.random.default_rng(seed).permutation(len(items.paths))
    batches = []
    for i in order:
        try:
            batches.append(make_views(load_rgb(items.paths[i]), views))
        except ImageError:
            continue
        if len(batches) == count:
            break
    if not batches:
        raise ValueError(f"--calibration {sources}: no decodable images")
    return torch.cat(batches)
