"""2-fold cleaning, the balanced subset and finetuning from a trained model's weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastprod.data.manifest import Manifest
from fastprod.recipe.clean import balanced_subset, stratified_halves

ROOT = Path(__file__).resolve().parents[2]


def test_stratified_halves_split_every_class_evenly():
    labels = np.random.default_rng(0).integers(0, 7, size=101)
    fold = stratified_halves(labels, seed=4)
    for cls in range(7):
        sizes = np.bincount(fold[labels == cls], minlength=2)
        assert abs(sizes[0] - sizes[1]) <= 1
    assert np.array_equal(fold, stratified_halves(labels, seed=4))
    assert not np.array_equal(fold, stratified_halves(labels, seed=5))


def test_balanced_subset_takes_the_top_k_kept_per_class():
    rng = np.random.default_rng(1)
    labels, conf, keep = rng.integers(0, 5, 60), rng.random(60), rng.random(60) < 0.7
    chosen = balanced_subset(labels, conf, keep, k=3)
    for cls in range(5):
        ranked = sorted((i for i in range(60) if labels[i] == cls and keep[i]), key=lambda i: -conf[i])
        assert set(np.flatnonzero(chosen & (labels == cls))) == set(ranked[:3])


@pytest.mark.e2e
def test_clean_command_end_to_end(manifest_dir, tmp_path):
    config = tmp_path / "clean.yaml"
    config.write_text(f"""
data: {{manifest: {manifest_dir}, image_size: 32, batch_size: 8, eval_batch_size: 64, workers: 0}}
model: {{name: resnet10t}}
optim: {{lr: 0.05}}
schedule: {{epochs: 1}}
run: {{progress: false}}
""")
    noise = Path(Manifest.load(manifest_dir).root) / "noise.json"
    out = tmp_path / "cleaned"
    done = subprocess.run([sys.executable, "-m", "fastprod.cli", "clean", "--config", str(config), "--out", str(out),
                           "--k", "2", "--noise", str(noise)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    full, cleaned, balanced = Manifest.load(manifest_dir), Manifest.load(out / "cleaned"), Manifest.load(out / "balanced")
    train = full.split("train")
    assert report["kept"] + report["removed"] == len(train) == report["train_images"]
    assert len(cleaned.split("train")) == report["kept"] and len(balanced.split("train")) == report["balanced"]
    assert set(cleaned.split("train").image_ids) >= set(balanced.split("train").image_ids)
    assert np.bincount(balanced.split("train").labels).max() <= 2
    assert cleaned.split("val").image_ids == full.split("val").image_ids and cleaned.class_ids == full.class_ids
    noisy = set(json.loads(noise.read_text()))
    removed = set(train.image_ids) - set(cleaned.split("train").image_ids)
    assert report["noisy_removed"] == len(removed & noisy) and report["clean_lost"] == len(removed - noisy)
    for fold in (0, 1):  # each fold trained on its own half
        half = Manifest.load(out / f"fold-{fold}" / "data").split("train")
        assert abs(2 * len(half) - len(train)) <= 6 and (out / f"fold-{fold}" / "run" / "final" / "model.pt").exists()
