"""Shared fixtures: a tiny synthetic AliProducts-format dataset, prepared once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthetic_data import prepared_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline: pretrained weights only from local files


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory) -> Path:
    return prepared_dataset(tmp_path_factory.mktemp("tiny"), classes=6, train_images=100, val_per_class=4,
                            noise=0.1, seed=3)
