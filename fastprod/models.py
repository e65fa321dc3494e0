"""`create_model`: a timm backbone with dropout after global pooling and a head sized to the dataset.

Implements the model part of the recipe (seed sections 1, 2 and 5): ResNet34 / ResNeSt / RegNet /
SENet154 / SEResNeXt from timm, `drop_rate` (0.5) applied to the pooled features before the
classifier, and ImageNet weights loaded offline from a local file (the classifier head is
re-initialised for the new class count); or, to finetune (seed section 4), every weight from a
fastprod checkpoint's weights file (`init_from`).

The model is built with contiguous parameters, which DeepSpeed's initial parameter broadcast
requires; the trainer switches it to channels_last afterwards (see `Trainer`).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from fastprod.config import ModelConfig


def create_model(cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
    if cfg.name not in timm.list_models():
        raise ValueError(f"model.name: unknown timm model '{cfg.name}'")
    kwargs: dict = dict(num_classes=num_classes, drop_rate=cfg.drop_rate)
    if cfg.pretrained_file:
        weights = Path(cfg.pretrained_file)
        if not weights.is_file():
            raise FileNotFoundError(f"model.pretrained_file: no such file: {weights}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    model = timm.create_model(cfg.name, **kwargs)
    if cfg.init_from:
        load_weights(model, Path(cfg.init_from))
    return model


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a full state dict saved by fastprod (finetuning starts from a trained model's weights)."""
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: no such file: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"model.init_from: {path} does not fit this model/class count: {err}") from None
