"""Normalisation and the evaluation view, shared by every data backend (seed sections 1-2).

The training augmentations are `fastprod.data.augmentations` (one module each). Evaluation: resize the
short side to image_size * eval_resize, then center crop. Both produce uint8 CHW tensors;
normalisation happens on the training device (`Normalize`), which keeps worker-to-trainer traffic 4x
smaller than float32. Fills (rotation corners, cutout) use the ImageNet mean colour (`MEAN_UINT8`),
i.e. zero after normalisation.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MEAN_UINT8 = tuple(round(255 * m) for m in MEAN)


def eval_ops(size: int, eval_resize: float) -> list:
    return [v2.Resize(round(size * eval_resize), antialias=True), v2.CenterCrop(size), v2.PILToTensor()]


class Normalize:
    """uint8 NCHW batch -> (x - 255 MEAN) / (255 STD) in float32 on `device`, channels_last if asked.

    The constants are made on the device once. The float batch is written once in its final memory
    format, then normalised in place (the float32 results of the plain `(x.float() - mean) / std`)."""

    def __init__(self, device: torch.device, channels_last: bool = True) -> None:
        self.device = device
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.to(self.device, non_blocking=True)
        out = torch.empty(pixels.shape, dtype=torch.float32, device=self.device, memory_format=self.format)
        return out.copy_(pixels).sub_(self.mean).div_(self.std)
