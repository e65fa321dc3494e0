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
    format, then normalised in place (the float32 results of the plain `(x.float() - mean) / std`); a
    channels_last batch as rows of W x 3 values with the constants repeated along a row, so the arithmetic
    runs over contiguous memory instead of broadcasting over 3 channels (1.7x faster on the CPU)."""

    def __init__(self, device: torch.device, channels_last: bool = True) -> None:
        self.device, self.channels_last = device, channels_last
        self.mean = torch.tensor(MEAN, device=device) * 255
        self.std = torch.tensor(STD, device=device) * 255
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # image width -> the constants along a row

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.to(self.device, non_blocking=True)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(pixels.shape, dtype=torch.float32, device=self.device, memory_format=layout)
        out.copy_(pixels)
        n, c, h, w = out.shape
        if not self.channels_last:
            return out.sub_(self.mean.view(1, c, 1, 1)).div_(self.std.view(1, c, 1, 1))
        if w not in self._rows:
            self._rows[w] = self.mean.repeat(w), self.std.repeat(w)
        mean, std = self._rows[w]
        out.permute(0, 2, 3, 1).view(n, h, w * c).sub_(mean).div_(std)
        return out
