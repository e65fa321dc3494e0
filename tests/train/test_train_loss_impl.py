"""Training with the fused loss paths (loss.impl: fused, fused_linear) follows the plain torch
reference step for step: the same losses and, after a few SGD steps, the same weights (to 1e-3 of
each tensor's norm: the fused paths sum in another order, and BatchNorm amplifies that slightly;
clipping at norm 1 keeps the four steps small enough for that bound)."""

from __future__ import annotations

import json

import pytest
import torch

from fastprod.config import ConfigError, load_config
from fastprod.recipe.train import create_trainer
from fastprod.train.distributed import init_distributed

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

CONFIG = """
data: {{manifest: {manifest}, image_size: 32, batch_size: 16, eval_batch_size: 64, workers: 0}}
model: {{name: resnet10t, drop_rate: 0.5}}
optim: {{lr: 0.05, weight_decay: 3.0e-4, grad_clip: 1.0}}
loss: {{name: sce, sce_beta: 0.5, label_smoothing: 0.1}}
o2u: {{enabled: true}}
schedule: {{epochs: 1, max_steps: 4}}
run: {{dir: {run_dir}, log_every_steps: 1, progress: false}}
"""


def train(manifest_dir, tmp_path, impl: str, *extra: str) -> tuple[list[float], dict]:
    path = tmp_path / f"{impl}.yaml"
    path.write_text(CONFIG.format(manifest=manifest_dir, run_dir=tmp_path / impl))
    create_trainer(load_config(path, [f"loss.impl={impl}", *extra]), init_distributed()).fit()
    lines = [json.loads(ln) for ln in (tmp_path / impl / "metrics.jsonl").read_text().splitlines()]
    losses = [ln["loss"] for ln in lines if ln["kind"] == "train"]
    return losses, torch.load(tmp_path / impl / "final" / "model.pt", map_location="cpu")


@pytest.fixture(scope="module")
def reference(manifest_dir, tmp_path_factory):
    return train(manifest_dir, tmp_path_factory.mktemp("reference"), "reference")


def assert_trains_like(run: tuple[list[float], dict], reference: tuple[list[float], dict]) -> None:
    losses, weights = run
    ref_losses, ref_weights = reference
    assert len(losses) == len(ref_losses) == 4
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    assert weights.keys() == ref_weights.keys()
    for name, value in weights.items():  # float summation order differs: compare each tensor by its norm
        ref = ref_weights[name].double()
        err = torch.linalg.vector_norm(value.double() - ref).item()
        assert err <= 1e-3 * torch.linalg.vector_norm(ref).item() + 1e-4, f"{name}: |diff| {err:.3g}"


@pytest.mark.parametrize("impl", ["fused", "fused_linear"])
def test_fused_training_matches_the_reference(reference, manifest_dir, tmp_path, impl):
    assert_trains_like(train(manifest_dir, tmp_path, impl), reference)


def test_compiled_training_matches_the_reference(reference, manifest_dir, tmp_path, monkeypatch):
    """model.compile: the backbone (here the features the fused head reads) through torch.compile (inductor),
    its dropout masks drawn by torch's eager generator (inductor's own draws other masks)."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    assert_trains_like(train(manifest_dir, tmp_path, "fused_linear", "model.compile=true"), reference)


def test_fused_linear_refuses_zero3(manifest_dir, tmp_path):
    with pytest.raises(ConfigError, match="loss.impl: fused_linear.*ZeRO-3"):
        train(manifest_dir, tmp_path, "fused_linear", "run.zero_stage=3")
