"""The recipe's augmentations as a list of operations (seed sections 1-2).

Training: random-resized crop -> horizontal flip -> rotation -> perspective -> uint8 tensor ->
cutout. Geometric operations resample at the output size (crop first), so their cost does not
grow with the source resolution. Evaluation: resize the short side to image_size * eval_resize,
then center crop. Both produce uint8 CHW tensors; normalisation happens on the training device
(`normalize_on_device`), which keeps worker-to-trainer traffic 4x smaller than float32.
Fills (rotation corners, cutout) use the ImageNet mean colour, i.e. zero after normalisation.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from fastprod.config import AugmentConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MEAN_UINT8 = tuple(round(255 * m) for m in MEAN)


def train_ops(size: int, aug: AugmentConfig) -> list:
    ops: list = [v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio, antialias=True)]
    if aug.hflip_p > 0:
        ops.append(v2.RandomHorizontalFlip(aug.hflip_p))
    if aug.rotation_p > 0 and aug.rotation_degrees > 0:
        rotate = v2.RandomRotation(aug.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=MEAN_UINT8)
        ops.append(v2.RandomApply([rotate], p=aug.rotation_p))
    if aug.perspective_p > 0 and aug.perspective_distortion > 0:
        ops.append(v2.RandomPerspective(aug.perspective_distortion, p=aug.perspective_p, fill=MEAN_UINT8))
    ops.append(v2.PILToTensor())
    if aug.cutout_p > 0:
        ops.append(v2.RandomErasing(p=aug.cutout_p, scale=aug.cutout_scale, value=list(MEAN_UINT8)))
    return ops


def eval_ops(size: int, eval_resize: float) -> list:
    return [v2.Resize(round(size * eval_resize), antialias=True), v2.CenterCrop(size), v2.PILToTensor()]


def normalize_on_device(images: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8 NCHW batch -> normalised float32 on `device` (channels_last if asked)."""
    x = images.to(device, non_blocking=True).float()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
