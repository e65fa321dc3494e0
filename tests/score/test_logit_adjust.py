"""Post-hoc logit adjustment at scoring time (`fastprod export --logit-adjust TAU`): the engine's probabilities
equal softmax(logits - TAU log prior) computed with numpy from the unadjusted engine and the training split's
class counts, on the eager and ONNX Runtime backends."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastprod.config import load_config, save_config
from fastprod.data.manifest import Manifest
from fastprod.models import create_model
from fastprod.score.engine import Engine, export_engine
from fastprod.score.tta import Views

pytestmark = pytest.mark.e2e  # exports engines

VIEWS = Views(32, (1.0,), ("center",), (False,))


@pytest.fixture(scope="module")
def checkpoint(manifest_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("la-run")
    cfg = load_config(None, [f"data.manifest={manifest_dir}", "data.image_size=32", "model.name=resnet10t",
                             f"run.dir={run}"])
    save_config(cfg, run / "resolved.yaml")
    torch.manual_seed(0)
    (run / "final").mkdir()
    torch.save(create_model(cfg.model, Manifest.load(manifest_dir).num_classes).state_dict(), run / "final" / "model.pt")
    return run / "final" / "model.pt"


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_adjusted_probabilities_follow_the_closed_form(checkpoint, manifest_dir, tmp_path, backend):
    views = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    plain = Engine(export_engine([checkpoint], tmp_path / "plain", backend=backend, views=VIEWS), "cpu")(views)
    tau = 1.5
    adjusted_dir = export_engine([checkpoint], tmp_path / "adjusted", backend=backend, views=VIEWS, logit_adjust=tau)
    adjusted = Engine(adjusted_dir, "cpu")(views)

    labels = Manifest.load(manifest_dir).split("train").labels
    counts = np.bincount(labels, minlength=plain.shape[1]).astype(np.float64)
    log_prior = np.log(np.maximum(counts, 1) / np.maximum(counts, 1).sum())
    z = np.log(plain.double().numpy()) - tau * log_prior  # log softmax(logits) differs from logits by a row constant
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(adjusted.double().numpy(), expected, rtol=1e-4, atol=1e-6)
    meta = json.loads((adjusted_dir / "engine.json").read_text())["logit_adjust"]
    assert meta["tau"] == tau and meta["train_class_counts"] == counts.astype(int).tolist()


def test_a_negative_tau_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--logit-adjust"):
        export_engine([checkpoint], tmp_path / "e", views=VIEWS, logit_adjust=-1.0)
    assert not (tmp_path / "e").exists()
