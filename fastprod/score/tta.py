"""Test-time augmentation views (seed section 5: multi-scale crop TTA).

A view is (scale, crop, flip). For scale s the image's short side is resized to
round(image_size * s) (antialiased, as `eval_ops` does), then an image_size x image_size crop is
taken at `crop` (center or one of the four corners), mirrored if `flip`. Every view has the model's
input size, so all views of a batch of images go through the engine as one dynamic batch and the
probabilities are averaged over the views of each image.

Scale 1.14 with crop "center" and no flip is exactly the evaluation transform of training
(`data.eval_resize` = 1.14), so the one-view engine reproduces the validation numbers.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

CROPS = ("center", "tl", "tr", "bl", "br")


@dataclass(frozen=True)
class Views:
    image_size: int
    scales: tuple[float, ...] = (1.14,)
    crops: tuple[str, ...] = ("center",)
    flips: tuple[bool, ...] = (False,)
    _list: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"views: image_size must be >= 8, got {self.image_size}")
        if not self.scales or any(s < 1.0 for s in self.scales):
            raise ValueError(f"views: scales must be >= 1 (the crop must fit the resized image), got {self.scales}")
        bad = [c for c in self.crops if c not in CROPS]
        if not self.crops or bad:
            raise ValueError(f"views: unknown crops {bad}; choose from {CROPS}")
        if not self.flips:
            raise ValueError("views: flips must hold False and/or True")
        object.__setattr__(self, "_list", tuple(itertools.product(self.scales, self.crops, self.flips)))

    def __len__(self) -> int:
        return len(self._list)

    def __iter__(self):
        return iter(self._list)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("_list")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> Views:
        return cls(int(d["image_size"]), tuple(float(s) for s in d["scales"]), tuple(d["crops"]),
                   tuple(bool(f) for f in d["flips"]))


def crop_box(height: int, width: int, size: int, crop: str) -> tuple[int, int]:
    """Top-left corner (top, left) of a size x size crop; center rounds like torchvision's center_crop."""
    if crop == "center":
        return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    top = 0 if crop[0] == "t" else height - size
    left = 0 if crop[1] == "l" else width - size
    return top, left


def make_views(image: Image.Image, views: Views) -> torch.Tensor:
    """uint8 [V, 3, S, S] tensor of every view of an RGB PIL image, in `views` order."""
    size = views.image_size
    out = torch.empty((len(views), 3, size, size), dtype=torch.uint8)
    resized: dict[float, torch.Tensor] = {}
    for i, (scale, crop, flip) in enumerate(views):
        if scale not in resized:
            resized[scale] = F.pil_to_tensor(F.resize(image, round(size * scale), antialias=True))
        img = resized[scale]
        top, left = crop_box(img.shape[1], img.shape[2], size, crop)
        view = img[:, top:top + size, left:left + size]
        out[i] = view.flip(-1) if flip else view
    return out


def blank_views(views: Views) -> torch.Tensor:
    """Placeholder for an image that failed to decode (its scores are discarded)."""
    return torch.zeros((len(views), 3, views.image_size, views.image_size), dtype=torch.uint8)


def average_views(probs: torch.Tensor, num_views: int) -> torch.Tensor:
    """[B * V, C] view probabilities (image-major) -> [B, C] mean over each image's views."""
    return probs.view(-1, num_views, probs.shape[-1]).mean(1)


def parse_views(image_size: int, scales: list[float] | None, crops: list[str] | None, flip: str) -> Views:
    flips = {"none": (False,), "both": (False, True), "only": (True,)}[flip]
    return Views(image_size, tuple(scales or (1.14,)), tuple(crops or ("center",)), flips)

