"""Normalisation and the evaluation view, shared by every data backend (seed sections 1-2).

The training augmentations are `fastprod.data.augmentations` (one module each). Evaluation: resize the
short side to image_size * eval_resize, then center crop. Both produce uint8 CHW tensors;
normalisation happens on the training device (`normalize_on_device`), which keeps worker-to-trainer
traffic 4x smaller than float32. Fills (rotation corners, cutout) use the ImageNet mean colour
(`MEAN_UINT8`), i.e. zero after normalisation.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MEAN_UINT8 = tuple(round(255 * m) for m in MEAN)


def eval_ops(size: int, eval_resize: float) -> list:
    return [v2.Resize(round(size * eval_resize), antialias=True), v2.CenterCrop(size), v2.PILToTensor()]


def normalize_on_device(images: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8 NCHW batch -> normalised float32 on `device` (channels_last if asked)."""
    x = images.to(device, non_blocking=True).float()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
