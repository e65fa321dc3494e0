"""Shared fixtures: a tiny synthetic AliProducts-format dataset, prepared once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline: pretrained weights only from local files


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory) -> Path:
    from fastprod.data.prepare import prepare
    from fastprod.data.synth import synthesize

    base = tmp_path_factory.mktemp("tiny")
    synthesize(base / "raw", classes=6, train_images=100, val_per_class=4, noise=0.1, seed=3, size=(40, 40),
               corrupt=0, workers=1)
    prepare(base / "raw", base / "prepared", workers=1)
    return base / "prepared"
