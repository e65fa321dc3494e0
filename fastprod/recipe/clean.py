"""2-fold cleaning and the balanced subset (seed section 4).

The training split is cut into two halves, stratified by class. A model is trained on each half
with the ordinary training code and predicts the other half. Samples whose prediction equals their
label are kept (`cleaned`); per class the `k` kept samples with the highest probability for their
label form the balanced subset (`balanced`, the seed keeps k = 3) on which the best model is then
finetuned (`model.init_from`). Both are written as prepared datasets that share the original root
and class mapping, with the validation split unchanged.

    fastprod clean --config CONFIG.yaml --out DIR [--k 3] [--noise noise.json] [--set key=value ...]

Re-running resumes: each fold is a normal run directory under DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from fastprod.config import Config
from fastprod.data.loaders import create_loader
from fastprod.data.manifest import Manifest, SplitView
from fastprod.train.distributed import Dist, barrier
from fastprod.train.evaluate import evaluate


def stratified_halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """Fold id (0 or 1) per sample: each class split in half in a seeded random order."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        fold[members[rng.integers(2)::2]] = 1  # which half gets the odd one out is random too
    return fold


def balanced_subset(labels: np.ndarray, confidence: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """Per class, the k kept samples with the highest confidence (ties: lower index first)."""
    chosen = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels[keep]):
        members = np.flatnonzero(keep & (labels == cls))
        order = members[np.argsort(-confidence[members], kind="stable")]
        chosen[order[:k]] = True
    return chosen


def predict(model: torch.nn.Module, split: SplitView, cfg: Config, dist: Dist) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max class (-1 if the image failed to load) and the probability of the given label per sample,
    gathered from all ranks."""
    loader = create_loader(split, cfg.data, train=False, rank=dist.rank, world=dist.world, seed=cfg.run.seed,
                           device=dist.device, channels_last=cfg.model.channels_last)
    result = evaluate(model, loader, len(split), dist.device)
    return result.pred, result.conf


def write_subset(manifest: Manifest, directory: Path, rows: np.ndarray, note: str, dist: Dist) -> Manifest:
    """The main rank writes the subset; every rank then reads it."""
    if dist.is_main:
        manifest.subset(directory, rows, note)
    barrier()
    return Manifest.load(directory)


def clean(cfg: Config, dist: Dist, *, out: Path, k: int = 3, noise: Path | None = None) -> dict:
    from fastprod.recipe.train import create_trainer

    manifest = Manifest.load(cfg.data.manifest)
    is_train = np.array(manifest.table["split"].to_pylist()) == cfg.data.train_split
    train = manifest.split(cfg.data.train_split)
    fold = stratified_halves(train.labels, cfg.run.seed)
    pred = np.zeros(len(train), dtype=np.int64)
    conf = np.zeros(len(train))
    for f in (0, 1):
        rows = is_train.copy()
        rows[is_train] = fold == f
        fold_manifest = write_subset(manifest, out / f"fold-{f}" / "data", rows | ~is_train,
                                     f"fold {f} of 2-fold cleaning", dist)
        fold_cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, manifest=str(fold_manifest.directory)),
            run=dataclasses.replace(cfg.run, dir=str(out / f"fold-{f}" / "run")),
        )
        trainer = create_trainer(fold_cfg, dist)
        trainer.fit()
        other = np.flatnonzero(fold != f)
        held_out = SplitView(f"fold-{1 - f}", [train.paths[i] for i in other], train.labels[other],
                             [train.image_ids[i] for i in other])
        pred[other], conf[other] = predict(trainer.engine, held_out, fold_cfg, dist)

    keep = pred == train.labels
    chosen = balanced_subset(train.labels, conf, keep, k)
    for name, mask, note in (("cleaned", keep, "prediction agrees with the label"),
                             ("balanced", chosen, f"top-{k} kept samples per class by confidence")):
        rows = ~is_train
        rows[is_train] = mask
        write_subset(manifest, out / name, rows, note, dist)
    report = {
        "train_images": len(train), "kept": int(keep.sum()), "removed": int((~keep).sum()),
        "balanced": int(chosen.sum()), "k": k, "classes_in_balanced": int(len(np.unique(train.labels[chosen]))),
        "cleaned_manifest": str(out / "cleaned"), "balanced_manifest": str(out / "balanced"),
    }
    if noise is not None:
        noisy_ids = set(json.loads(Path(noise).read_text()))
        noisy = np.array([i in noisy_ids for i in train.image_ids])
        report.update(noisy=int(noisy.sum()), noisy_removed=int((noisy & ~keep).sum()),
                      clean_lost=int((~noisy & ~keep).sum()), noisy_in_balanced=int((noisy & chosen).sum()))
    if dist.is_main:
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run(args: argparse.Namespace) -> int:
    from fastprod.train.cli import with_trainer_setup

    return with_trainer_setup(args, lambda cfg, dist: clean(cfg, dist, out=Path(args.out), k=args.k, noise=args.noise))


def register(subparsers) -> None:
    from fastprod.train.cli import add_arguments

    parser = subparsers.add_parser("clean", help="2-fold cleaning and the balanced subset (seed section 4)")
    add_arguments(parser)
    parser.add_argument("--out", required=True, help="directory for the fold runs and the cleaned/balanced manifests")
    parser.add_argument("--k", type=int, default=3, help="kept samples per class in the balanced subset")
    parser.add_argument("--noise", type=Path, default=None,
                        help="noise.json of a synthetic dataset, to report what cleaning removed")
    parser.set_defaults(func=run)
