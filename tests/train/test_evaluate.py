"""The one evaluation loop (train/evaluate.py) against a plain loop with torch's own cross entropy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fastprod.config import ModelConfig, load_config
from fastprod.data.loaders import create_loader
from fastprod.data.manifest import Manifest, SplitView
from fastprod.models import create_model
from fastprod.train.evaluate import evaluate


def test_evaluate_matches_a_plain_loop_and_leaves_out_images_that_fail(manifest_dir, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="resnet10t", drop_rate=0.5), Manifest.load(manifest_dir).num_classes)
    good = Manifest.load(manifest_dir).split("val")
    paths = list(good.paths)
    paths[3] = str(tmp_path / "gone.jpg")  # fails to load
    split = SplitView("val", paths, good.labels, good.image_ids)
    cfg = load_config(None, [f"data.manifest={manifest_dir}", "data.image_size=32", "data.eval_batch_size=5",
                             "data.workers=0"]).data
    loader = create_loader(split, cfg, train=False)
    model.train()  # evaluate switches to eval mode and back
    result = evaluate(model, loader, len(split), torch.device("cpu"))
    assert model.training and capsys.readouterr().err == ""
    shown = evaluate(model, loader, len(split), torch.device("cpu"), progress="predict val")  # with its bar
    err = capsys.readouterr().err
    assert "predict val: 100%" in err and f"{len(loader)}/{len(loader)} " in err, err
    np.testing.assert_array_equal(shown.pred, result.pred)
    first_fails = SplitView("val", [paths[3]] * 5 + paths[5:], good.labels, good.image_ids)  # a whole batch
    shown = evaluate(model, create_loader(first_fails, cfg, train=False), len(split), torch.device("cpu"), progress="x")
    assert shown.failures == 5 and "x: 100%" in capsys.readouterr().err  # the failed batch counted too

    model.eval()
    loader.rewind()
    logits, labels, indices = [], [], []
    with torch.no_grad():
        for batch in loader:
            logits.append(model(batch.images).double())
            labels.append(batch.labels)
            indices.append(batch.indices)
    logits, labels, indices = torch.cat(logits), torch.cat(labels), torch.cat(indices)
    assert 3 not in indices.tolist() and result.failures == 1
    metrics = result.metrics(split.labels)
    assert metrics["images"] == len(split) - 1 and not result.loaded[3] and result.pred[3] == -1
    expected_error = (logits.argmax(1) != labels).double().mean().item()
    assert metrics["top1_error"] == expected_error
    np.testing.assert_allclose(metrics["loss"], F.cross_entropy(logits, labels).item(), rtol=1e-6)
    np.testing.assert_allclose(result.conf[indices.numpy()], logits.softmax(1).gather(1, labels[:, None]).squeeze(1),
                               rtol=1e-5)

    # post-hoc logit adjustment: the arg-max of the logits minus tau·log prior; conf and loss stay the model's own
    prior = torch.arange(1, logits.shape[1] + 1, dtype=torch.float64)
    adjust = 3.0 * (prior / prior.sum()).log()  # tau 3: strong enough to move some predictions
    adjusted = evaluate(model, loader, len(split), torch.device("cpu"), adjust=adjust.float())
    expected = (logits - adjust).argmax(1).numpy()
    np.testing.assert_array_equal(adjusted.pred[indices.numpy()], expected)
    assert (expected != logits.argmax(1).numpy()).any()  # the check has teeth
    np.testing.assert_array_equal(adjusted.conf, result.conf)


def test_shot_group_errors_count_each_class_by_its_training_images():
    """Classes with > 100 / 20-100 / < 20 training images; each group's error over its loaded validation images."""
    from fastprod.train.evaluate import Evaluation

    rng = np.random.default_rng(0)
    sizes = np.array([500, 101, 100, 20, 19, 1, 0])  # every boundary
    labels = rng.integers(0, len(sizes), 400)
    pred = np.where(rng.random(400) < 0.6, labels, (labels + 1) % len(sizes))
    loaded = rng.random(400) < 0.9
    result = Evaluation(loaded, np.where(loaded, pred, -1), np.ones(400), np.ones(400), failures=0)
    metrics = result.metrics(labels, sizes)
    groups = {"many": [0, 1], "medium": [2, 3], "few": [4, 5, 6]}
    for name, classes in groups.items():
        rows = [i for i in range(400) if loaded[i] and labels[i] in classes]
        assert metrics[f"top1_error_{name}"] == sum(pred[i] != labels[i] for i in rows) / len(rows)
        assert metrics[f"classes_{name}"] == len(classes)
    assert result.metrics(labels, np.full(len(sizes), 50))["top1_error_few"] is None  # no few-shot class
