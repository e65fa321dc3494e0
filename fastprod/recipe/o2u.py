"""O2U-style per-sample weights (seed section 3; Huang et al., ICCV 2019).

During each SGDR cycle every training sample's cross entropy is recorded (keyed by its index in the
training split, gathered across data-parallel ranks), normalised per epoch by subtracting that
epoch's mean loss, and averaged over the cycle: a high score means a likely noisy label. At the
cycle's end the scores become the weights of the next cycle:

    z = (score - mean(score)) / std(score)        standardised over the samples seen
    w = 2 * sigmoid(-z / temperature)             in (0, 2): noisy-looking samples count less
    w = w / mean(w)                               mean weight 1, so the effective LR does not drift

Weights are applied from cycle `warmup_cycles` on (the seed first trains "several cycles to stable
the training process"); before that every weight is 1. `per_class` matters on a long tail: samples
of rare classes have high loss because their class is hard, not because their label is wrong, and a
global ranking would push the whole tail down (measured on the ladder: fastprod/recipe/ladder.py). Scores and weights are written at each cycle
end to `<run>/o2u/cycle-<k>.csv` so likely-noisy samples can be inspected. All state is in
`state_dict()`, so a resumed run continues the same averages.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from fastprod.config import O2UConfig
from fastprod.train.distributed import all_reduce_tensor


class O2UWeights:
    """The trainer's `SampleWeights` (fastprod/train/sample_weights.py) for O2U."""

    name = "o2u"

    def __init__(self, num_samples: int, cfg: O2UConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.weights = torch.ones(num_samples, dtype=torch.float32, device=device)
        self.epoch_sum = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.epoch_count = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.cycle_sum = torch.zeros(num_samples, dtype=torch.float64, device=device)
        self.cycle_epochs = torch.zeros(num_samples, dtype=torch.float64, device=device)

    def weights_for(self, indices: torch.Tensor) -> torch.Tensor:
        return self.weights[indices.to(self.device)]

    def record(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Per-sample unweighted losses of one training batch on this rank."""
        indices = indices.to(self.device)
        self.epoch_sum.index_add_(0, indices, losses.detach().to(torch.float64))
        self.epoch_count.index_add_(0, indices, torch.ones_like(indices, dtype=torch.float64))

    def end_epoch(self) -> None:
        """Collective: merge the ranks' shards, subtract the epoch mean, add to the cycle average."""
        total = all_reduce_tensor(torch.stack([self.epoch_sum, self.epoch_count]))
        seen = total[1] > 0
        if seen.any():
            loss = total[0][seen] / total[1][seen]
            self.cycle_sum[seen] += loss - loss.mean()
            self.cycle_epochs[seen] += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()

    def scores(self) -> torch.Tensor:
        """The cycle's normalised average loss per sample (NaN for samples not seen this cycle)."""
        return torch.where(self.cycle_epochs > 0, self.cycle_sum / self.cycle_epochs.clamp(min=1), float("nan"))

    def end_cycle(self, cycle: int, out_dir: Path | None, image_ids: list[str], labels: np.ndarray) -> Path | None:
        """Turn this cycle's scores into the next cycle's weights; the main rank writes them to a CSV."""
        scores = self.scores()
        seen = ~scores.isnan()
        new = torch.ones_like(self.weights)
        if seen.sum() > 1:
            s = scores[seen]
            if self.cfg.per_class:
                s = s - class_means(s, torch.as_tensor(labels, device=s.device).long()[seen])
            z = (s - s.mean()) / s.std().clamp(min=1e-12)
            w = 2 * torch.sigmoid(-z / self.cfg.temperature)
            new[seen] = (w / w.mean()).float()
        if cycle + 1 >= self.cfg.warmup_cycles:
            self.weights = new
        self.cycle_sum.zero_()
        self.cycle_epochs.zero_()
        if out_dir is None:
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"cycle-{cycle}.csv"
        rows = zip(image_ids, labels.tolist(), scores.cpu().tolist(), new.cpu().tolist())
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "image_id", "label", "score", "weight"])
            writer.writerows((i, *row) for i, row in enumerate(rows))
        return path

    def state_dict(self) -> dict:
        return {k: getattr(self, k).cpu().clone() for k in ("weights", "epoch_sum", "epoch_count", "cycle_sum", "cycle_epochs")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value.to(self.device))


def class_means(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each element's class mean of `values` (labels: class index per element)."""
    n = int(labels.max()) + 1
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, labels, values)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, labels, torch.ones_like(values))
    return (sums / counts.clamp(min=1))[labels]


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive scores above a negative (ties count half), by rank sums."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def noise_detection(score_csv: Path, noisy_ids: set[str]) -> dict:
    """How well a cycle's scores find the injected noise (`fastprod synth`'s noise.json, which
    training never reads): AUROC of the raw score, precision = recall at the top-|noisy| scores, and the
    AUROC of the weights the next cycle applies (low weight = noisy; with `o2u.per_class` they rank
    samples within their class, so the two differ when the noise is uneven across classes)."""
    with open(score_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["score"] != "nan"]
    scores = np.array([float(r["score"]) for r in rows])
    weights = np.array([float(r["weight"]) for r in rows])
    noisy = np.array([r["image_id"] in noisy_ids for r in rows])
    n_pos = int(noisy.sum())
    if n_pos == 0 or n_pos == len(rows):
        return {"samples": len(rows), "noisy": n_pos, "auroc": None, "precision_at_k": None, "weight_auroc": None}
    top = np.argsort(scores, kind="stable")[::-1][:n_pos]
    return {"samples": len(rows), "noisy": n_pos, "auroc": _auroc(scores, noisy),
            "precision_at_k": float(noisy[top].mean()), "weight_auroc": _auroc(-weights, noisy)}
