"""O2U sample weights: per-epoch normalisation, cycle averaging, the score-to-weight mapping,
state round trip, and the noise-detection report against brute-force references."""

import csv

import numpy as np
import pytest
import torch

from fastprod.config import O2UConfig
from fastprod.recipe.o2u import O2UWeights, noise_detection


def feed(o2u: O2UWeights, losses: np.ndarray, batch: int = 3) -> None:
    """One epoch: record `losses` (indexed by sample) in shuffled batches, then end the epoch."""
    order = np.random.default_rng(len(losses)).permutation(len(losses))
    for s in range(0, len(order), batch):
        idx = torch.tensor(order[s:s + batch])
        o2u.record(idx, torch.tensor(losses[order[s:s + batch]], dtype=torch.float32))
    o2u.end_epoch()


def test_scores_and_weights_follow_the_formulas(tmp_path):
    rng = np.random.default_rng(0)
    epochs = [rng.gamma(2.0, 1.0, size=10).astype(np.float32) for _ in range(3)]
    o2u = O2UWeights(10, O2UConfig(enabled=True, warmup_cycles=1, temperature=0.5, per_class=False),
                     torch.device("cpu"))
    assert torch.equal(o2u.weights_for(torch.arange(10)), torch.ones(10))
    for losses in epochs:
        feed(o2u, losses)
    expected = np.mean([e.astype(np.float64) - e.astype(np.float64).mean() for e in epochs], axis=0)
    np.testing.assert_allclose(o2u.scores().numpy(), expected, rtol=1e-6)

    ids = [f"{i}.jpg" for i in range(10)]
    path = o2u.end_cycle(0, tmp_path, ids, np.arange(10) % 3)
    z = (expected - expected.mean()) / expected.std(ddof=1)
    w = 2 / (1 + np.exp(z / 0.5))
    np.testing.assert_allclose(o2u.weights.numpy(), w / w.mean(), rtol=1e-5)
    assert o2u.weights.mean().item() == pytest.approx(1.0)
    assert np.argmax(expected) == int(o2u.weights.argmin())  # the most suspicious sample counts least
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == ids
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-6)
    assert torch.isnan(o2u.scores()).all()  # the next cycle starts empty


def test_per_class_scores_are_relative_to_the_class_mean():
    """A hard (high-loss) class keeps its weights; within each class the outlier counts least."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    losses = np.array([1.0, 1.2, 0.8, 3.0, 5.0, 5.5, 4.5, 9.0], dtype=np.float32)  # class 1 hard, 2 a singleton
    o2u = O2UWeights(8, O2UConfig(enabled=True, warmup_cycles=1), torch.device("cpu"))
    feed(o2u, losses)
    o2u.end_cycle(0, None, [str(i) for i in range(8)], labels)
    score = losses.astype(np.float64) - losses.mean()
    r = score - np.array([score[labels == c].mean() for c in labels])
    z = (r - r.mean()) / r.std(ddof=1)
    w = 2 / (1 + np.exp(z))
    np.testing.assert_allclose(o2u.weights.numpy(), w / w.mean(), rtol=1e-5)
    assert int(o2u.weights.argmin()) == 3  # the outlier of the easy class, not the hard class
    assert o2u.weights[7] == pytest.approx(o2u.weights[4].item())  # singleton and class-mean sample: r = 0


def test_warmup_keeps_unit_weights_and_state_round_trips():
    o2u = O2UWeights(6, O2UConfig(enabled=True, warmup_cycles=2), torch.device("cpu"))
    feed(o2u, np.arange(6, dtype=np.float32))
    o2u.end_cycle(0, None, [str(i) for i in range(6)], np.zeros(6))
    assert torch.equal(o2u.weights, torch.ones(6))  # cycle 1 is still warm-up
    feed(o2u, np.arange(6, dtype=np.float32)[::-1].copy())
    half = O2UWeights(6, O2UConfig(enabled=True, warmup_cycles=2), torch.device("cpu"))
    half.load_state_dict(o2u.state_dict())
    for model in (o2u, half):
        model.end_cycle(1, None, [str(i) for i in range(6)], np.zeros(6))
    assert torch.equal(o2u.weights, half.weights) and not torch.equal(o2u.weights, torch.ones(6))


def test_noise_detection_against_pairwise_auroc(tmp_path):
    rng = np.random.default_rng(1)
    n = 40
    noisy = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.5 * noisy
    scores[:4] = 0.25  # ties
    weights = 2 / (1 + np.exp(rng.normal(size=n) + noisy))  # lower for the noisy ones, on another ranking
    weights[5:8] = 1.0  # ties
    path = tmp_path / "cycle-0.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "image_id", "label", "score", "weight"])
        writer.writerows((i, f"{i}.jpg", 0, s, w) for i, (s, w) in enumerate(zip(scores, weights)))
    report = noise_detection(path, {f"{i}.jpg" for i in np.flatnonzero(noisy)})

    def pairwise(pos, neg):
        return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert report["auroc"] == pytest.approx(pairwise(scores[noisy], scores[~noisy]))
    assert report["weight_auroc"] == pytest.approx(pairwise(-weights[noisy], -weights[~noisy]))
    assert report["weight_auroc"] != pytest.approx(report["auroc"])
    k = int(noisy.sum())
    assert report["precision_at_k"] == pytest.approx(noisy[np.argsort(-scores, kind="stable")[:k]].mean())
