"""The one evaluation loop: a model scores every sample of a split (the trainer's validation after each
epoch, 2-fold cleaning's cross prediction of seed section 4, the ladder's diagnosis of its final models).

Validation error is also reported per shot group (`SHOT_GROUPS`): classes with many (> 100), medium (20-100)
and few (< 20) training images, the long-tail literature's thresholds (Liu et al., OLTR, CVPR 2019), so every
run shows where its error is (on AliProducts most classes are medium- or few-shot).

Per-sample results stay on the device until the pass is over and are then summed across ranks in one
collective (evaluation shards are disjoint), so the loop never waits on the host per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fastprod.data.loaders import Loader
from fastprod.train.distributed import all_reduce, all_reduce_tensor


# name -> (min, max) training images per class, inclusive
SHOT_GROUPS = {"many": (101, None), "medium": (20, 100), "few": (0, 19)}


@dataclass(frozen=True)
class Evaluation:
    """Per sample of the split: whether it loaded, its arg-max class (-1 if not loaded), the probability and
    cross entropy of its label; and how many images failed to load on all ranks."""

    loaded: np.ndarray
    pred: np.ndarray
    conf: np.ndarray
    ce: np.ndarray
    failures: int

    def metrics(self, labels: np.ndarray, train_class_sizes: np.ndarray | None = None) -> dict:
        """Top-1 error and mean cross entropy over the samples that loaded; with the training images per class,
        also the top-1 error of each shot group (`top1_error_few` ...; None for a group without validation
        images) and how many classes each group holds (`classes_few` ...)."""
        count = int(self.loaded.sum())
        wrong = self.loaded & (self.pred != labels)
        out = {"top1_error": int(wrong.sum()) / max(count, 1),
               "loss": float(self.ce[self.loaded].sum()) / max(count, 1), "images": count,
               "load_failures": self.failures}
        if train_class_sizes is not None:
            out.update(shot_group_errors(wrong, self.loaded, labels, train_class_sizes))
        return out


def shot_group_errors(wrong: np.ndarray, counted: np.ndarray, labels: np.ndarray,
                      train_class_sizes: np.ndarray) -> dict:
    """Per shot group: the error over the `counted` samples of its classes (`top1_error_few` ...; None for a group
    without any) and how many classes it holds (`classes_few` ...)."""
    out: dict = {}
    for name, (low, high) in SHOT_GROUPS.items():
        in_group = (train_class_sizes >= low) & (train_class_sizes <= (high if high is not None else np.inf))
        rows = counted & in_group[labels]
        out[f"top1_error_{name}"] = int(wrong[rows].sum()) / int(rows.sum()) if rows.any() else None
        out[f"classes_{name}"] = int(in_group.sum())
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Loader, num_samples: int, device: torch.device,
             progress: str | None = None, adjust: torch.Tensor | None = None) -> Evaluation:
    """One whole pass of `loader` (an evaluation loader over a split of `num_samples`) through `model`;
    `progress`: the label of a progress bar over this rank's batches (None: no bar), left on the screen when
    it is the only bar (clean's predictions), cleared when under the training bar (validation). With
    `adjust` [C] the predicted class is the arg-max of the logits minus it (post-hoc logit adjustment, Menon et
    al. 2021: adjust = tau·log prior); the label's probability and cross entropy stay the model's own."""
    offset = adjust.to(device) if adjust is not None else 0.0
    loader.rewind()
    was_training = model.training
    model.eval()
    rows = torch.zeros(4, num_samples, dtype=torch.float64, device=device)  # loaded, pred, conf, ce
    with tqdm(total=len(loader), desc=progress, unit="batch", disable=progress is None, dynamic_ncols=True,
              leave=None) as bar:
        for batch in loader:
            log_probs = model(batch.images).float().log_softmax(-1)
            label_log_prob = log_probs.gather(1, batch.labels[:, None]).squeeze(1).double()
            idx = batch.indices.to(device)
            rows[0, idx] = 1.0
            rows[1, idx] = (log_probs - offset).argmax(-1).double()
            rows[2, idx] = label_log_prob.exp()
            rows[3, idx] = -label_log_prob
            bar.update(loader.batches_done - bar.n)  # with the batches before it that failed whole
        bar.update(loader.batches_done - bar.n)
    model.train(was_training)
    rows = all_reduce_tensor(rows).cpu().numpy()
    failures = int(all_reduce([loader.failures], device)[0])
    loaded = rows[0] > 0
    return Evaluation(loaded, np.where(loaded, rows[1], -1).astype(np.int64), rows[2], rows[3], failures)
