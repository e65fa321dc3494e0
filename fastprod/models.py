"""`create_model`: a timm backbone with dropout after global pooling and a head sized to the dataset.

Implements the model part of the recipe (seed sections 1, 2 and 5): ResNet34 / ResNeSt / RegNet /
SENet154 / SEResNeXt from timm, `drop_rate` (0.5) applied to the pooled features before the
classifier, and ImageNet weights loaded offline from a local file (the classifier head is
re-initialised for the new class count); or, to finetune (seed section 4), every weight from a
fastprod checkpoint's weights file (`init_from`).

Every way the model settings can be wrong — an unknown `model.name` (close timm names are suggested),
a missing or unreadable `model.pretrained_file` / `model.init_from`, weights that do not fit the
model — is a one-line `ConfigError` naming the key. Weights files are loaded with
`torch.load(weights_only=True)`: a pickle that would run code is refused unread.

The model is built with contiguous parameters, which DeepSpeed's initial parameter broadcast
requires; the trainer switches it to channels_last afterwards (see `Trainer`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import timm
import torch

from fastprod.config import ConfigError, ModelConfig


def _one_line(err: BaseException, limit: int = 400) -> str:
    """`Type: message` of an exception on one line (whitespace collapsed), cut to `limit` characters."""
    message = " ".join(str(err).split())
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_name(name: str) -> None:
    """model.name must be a timm architecture; the error suggests the closest ones."""
    known = timm.list_models()
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
    raise ConfigError(f"model.name: unknown timm model '{name}' ({hint})")


def create_model(cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
    """The configured timm model with a `num_classes` head; ConfigError (naming the key) for bad settings."""
    _check_name(cfg.name)
    kwargs: dict = dict(num_classes=num_classes, drop_rate=cfg.drop_rate)
    if not cfg.pretrained_file:
        model = timm.create_model(cfg.name, **kwargs)
    else:
        weights = Path(cfg.pretrained_file)
        if not weights.is_file():
            raise ConfigError(f"model.pretrained_file: no such file: {weights}")
        try:  # timm reads the file with torch.load(weights_only=True) or safetensors
            model = timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)
        except Exception as err:  # any failure here is the file's: unreadable, refused pickle, wrong architecture
            raise ConfigError(f"model.pretrained_file: {weights} cannot be loaded into {cfg.name}: "
                              f"{_one_line(err)}") from None
    if cfg.init_from:
        load_weights(model, Path(cfg.init_from))
    return model


def refused_global(err: Exception) -> str | None:
    """The callable a `torch.load(weights_only=True)` refusal names (e.g. "GLOBAL posix.system"), if any."""
    code = re.search(r"GLOBAL [\w.]+", str(err))
    return code[0] if code else None


def load_weights(model: torch.nn.Module, path: Path, key: str = "model.init_from") -> None:
    """Load a full state dict saved by fastprod (finetuning starts from a trained model's weights).

    Only plain tensors and containers are unpickled (weights_only=True); anything else — a file that is
    missing, unreadable, a pickle of other objects, or weights of another model — is a ConfigError
    naming `key` (the setting the path came from)."""
    if not path.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises UnpicklingError, KeyError, EOFError, ... for other files
        code = refused_global(err)
        if code:
            raise ConfigError(f"{key}: {path} holds Python objects ({code}), not only tensors: refused unread, "
                              "since unpickling it could run code") from None
        raise ConfigError(f"{key}: {path} cannot be read as a weights file ({_one_line(err)})") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ConfigError(f"{key}: {path} does not fit this model/class count: {_one_line(err)}") from None
