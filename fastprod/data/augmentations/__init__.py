"""The recipe's training augmentations (seed sections 1-2), one module each, and the pipelines built from them.

Every sample's augmentation is drawn from (seed, epoch, index): the PIL backend seeds torch's RNG per
sample and lets torchvision draw; the DALI and FFCV backends, whose own random operators cannot be
seeded per sample, draw one vector of uniforms per sample (`uniforms`; `core`) and turn it into the
same distributions as torchvision's, so both apply identical parameters and a resumed run equals an
uninterrupted one.

A pipeline is a list of operations, built from `AUGMENTATIONS` in order: `train_ops` for PIL
(torchvision transforms), `stages` for DALI and FFCV (the loaders turn each stage into its part of
the DALI graph or its FFCV operation; rotation and perspective share one warp there, `warp.JOINS`).
The crop comes first: DALI and FFCV decode there (FFCV's decoder, which subclasses FFCV's, is
`fastprod.data.loaders.ffcv_ops.SeededRandomResizedCrop`, where FFCV is imported).

An augmentation module has:
- `UNIFORMS`: name -> count of the uniforms it draws per sample (its slots: placed after those of the
  modules registered before it; `FIRST` is set below), and its parameter functions, marked
  `@compiled` so the FFCV backend runs them compiled by numba;
- `enabled(aug)` and `pil(size, aug)`: whether the `AugmentConfig` switches it on, and its torchvision
  transform (`PIL_TENSOR = True`: it takes the uint8 tensor, so PILToTensor goes before it);
- its DALI and FFCV stage: `DALI_COLUMNS`, `dali_feed(u, height, width, size, aug)` (the per-sample
  arrays fed to the graph), `dali_apply(graph, image, fed)`, `DALI_CONDITIONAL = True` if that uses a
  DALI conditional; `ffcv_params(size, aug)` (constants) and `@compiled ffcv_apply(src, dst, u, params)`
  (one image, numba) -- or, instead, a shared stage module lists it in its `JOINS`.

Adding an augmentation: one new module here with the above, and one line in `AUGMENTATIONS` (plus
its switches in `AugmentConfig`, the user-facing config). The list's order is the pipeline order of
every backend and the order of the uniforms: a module inserted before others moves their uniforms,
so a seed then draws other parameters for them than older runs did (the backends still agree).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
from torchvision.transforms import v2

from fastprod.config import AugmentConfig
from fastprod.data.augmentations import crop, cutout, flip, perspective, rotation, warp
from fastprod.data.augmentations.core import jitted, place_uniforms, sample_seed
from fastprod.data.augmentations.crop import center_window, crop_window
from fastprod.data.augmentations.cutout import cutout_box
from fastprod.data.augmentations.flip import flips
from fastprod.data.augmentations.warp import warp_matrix

AUGMENTATIONS: tuple[ModuleType, ...] = (
    crop,
    flip,
    rotation,
    perspective,
    cutout,
)
SHARED_STAGES: tuple[ModuleType, ...] = (warp,)  # DALI/FFCV stages applying several augmentations at once
N_UNIFORMS = place_uniforms(AUGMENTATIONS)
_STAGE_OF = {augmentation: stage for stage in SHARED_STAGES for augmentation in stage.JOINS}


def uniforms(seed: int, epoch: int, index: int) -> np.ndarray:
    """The sample's uniforms in [0, 1) (Python side; numba code draws them with np.random after
    np.random.seed(sample_seed(...)))."""
    return np.random.RandomState(sample_seed(seed, epoch, index)).random_sample(N_UNIFORMS)


def enabled(aug: AugmentConfig) -> list[ModuleType]:
    """The augmentations `aug` switches on, in pipeline order."""
    return [a for a in AUGMENTATIONS if a.enabled(aug)]


def train_ops(size: int, aug: AugmentConfig) -> list:
    """The PIL backend's training pipeline: the torchvision transforms, uint8 CHW tensors out."""
    on = enabled(aug)
    ops = [a.pil(size, aug) for a in on]
    ops.insert(next((i for i, a in enumerate(on) if getattr(a, "PIL_TENSOR", False)), len(on)), v2.PILToTensor())
    return ops


def stages(aug: AugmentConfig) -> list[ModuleType]:
    """The DALI and FFCV training pipeline: the stages of the augmentations `aug` switches on, a shared
    stage once (at its first augmentation's place); the first is the crop, where decoding happens."""
    result: list[ModuleType] = []
    for augmentation in enabled(aug):
        stage = _STAGE_OF.get(augmentation, augmentation)
        if stage not in result:
            result.append(stage)
    return result


__all__ = ["AUGMENTATIONS", "N_UNIFORMS", "SHARED_STAGES", "center_window", "crop_window", "cutout_box", "enabled",
           "flips", "jitted", "sample_seed", "stages", "train_ops", "uniforms", "warp_matrix"]
