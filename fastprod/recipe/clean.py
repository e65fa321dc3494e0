"""2-fold cleaning and the balanced subset (seed section 4), judged per class so that the tail survives.

The training split is cut into two halves, stratified by class. A model is trained on each half
with the ordinary training code and predicts the other half: per sample its arg-max class and the
probability of its own label (its self-confidence). A sample *agrees* with its label when the
prediction is its label, or when its self-confidence reaches its class's threshold: the mean
self-confidence of the samples labelled with that class (confident learning's per-class threshold,
Northcutt et al., JAIR 2021). Per class rather than one global rule, because the fold models,
trained on half the data for a short budget, are weakest on the tail classes: there the arg-max
alone rarely agrees and would empty the tail (as O2U scores are normalised per class for the same
reason). Every class with samples keeps at least one (its most self-confident).

Under `--out DIR`, as prepared datasets that share the original root and class mapping, with the
validation split unchanged:
- `cleaned/`: the agreeing samples (the same for every k);
- `balanced-k<k>/`: per class its k agreeing samples with the highest self-confidence; a class with
  fewer than k agreeing samples is filled up with its most self-confident other samples, so every
  class keeps min(k, its size) samples and a finetune on the subset can still predict it (the seed
  keeps k = 3; finetune it with `fastprod finetune`, fastprod/recipe/finetune.py);
- `report-k<k>.json`: the counts; `per-class-k<k>.csv`: per class its training images, threshold,
  agreeing samples, balanced samples and how many of those were filled in (plus the injected noise
  found and lost with `--noise`).

    fastprod clean --config CONFIG.yaml --out DIR [--k 3] [--noise noise.json] [--set key=value ...]

Pass a trained run's `resolved.yaml` as the config so that the fold models are trained like it
(loss, O2U, augmentation). Re-running resumes (each fold is a normal run directory under DIR), and
runs with another `--k` add their own outputs next to the others. A subset directory that already
holds other rows (written with other settings) is refused with an error, never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from fastprod.config import Config, ConfigError
from fastprod.data.loaders import create_loader
from fastprod.data.manifest import Manifest, SplitView, class_members
from fastprod.train.distributed import Dist, barrier
from fastprod.train.evaluate import evaluate


def stratified_halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """Fold id (0 or 1) per sample: each class split in half in a seeded random order."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for members in class_members(labels):
        members = rng.permutation(members)
        fold[members[rng.integers(2)::2]] = 1  # which half gets the odd one out is random too
    return fold


def agreement(labels: np.ndarray, pred: np.ndarray, conf: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample whether it agrees with its label (module docstring), and the per-class thresholds
    (the mean self-confidence of each class's samples; NaN for a class without samples)."""
    counts = np.bincount(labels, minlength=classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        threshold = np.bincount(labels, weights=conf, minlength=classes) / counts
    return (pred == labels) | (conf >= threshold[labels]), threshold


def balanced_subset(labels: np.ndarray, confidence: np.ndarray, agree: np.ndarray, k: int) -> np.ndarray:
    """Per class, its k agreeing samples with the highest confidence, filled up with its most confident
    other samples when fewer than k agree (ties: lower index first)."""
    order = np.lexsort((-confidence, ~agree, labels))  # by class; in it agreeing first, then by confidence
    grouped = labels[order]
    rank = np.arange(len(order)) - np.searchsorted(grouped, grouped)  # the place of each in its class
    chosen = np.zeros(len(labels), dtype=bool)
    chosen[order[rank < k]] = True
    return chosen


def read_noise(path: Path, train: SplitView, class_ids: list[str]) -> np.ndarray:
    """Which training samples the `--noise` file says are mislabelled. The format is the `noise.json` of
    `fastprod synth`: {image_id: {"given": class_id, "true": class_id}} for the mislabelled training images
    only; a file in another format, or describing another dataset, is refused (a map of every image to its
    true class once read as "every image is noisy")."""
    expected = ('a JSON object {image_id: {"given": class_id, "true": class_id}} of the mislabelled training '
                "images only (the noise.json of fastprod synth)")
    try:
        noise = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--noise {path}: cannot read it as JSON ({err}); expected {expected}") from None
    if not isinstance(noise, dict):
        raise ConfigError(f"--noise {path}: a JSON {type(noise).__name__}, expected {expected}")
    bad = next(((i, v) for i, v in noise.items() if not (isinstance(v, dict) and set(v) == {"given", "true"})), None)
    if bad:
        raise ConfigError(f"--noise {path}: entry {json.dumps(bad[0])}: {json.dumps(bad[1])[:80]}, expected {expected}")
    given = {i: class_ids[label] for i, label in zip(train.image_ids, train.labels)}
    wrong = next((i for i, v in noise.items() if given.get(i) != v["given"] or v["given"] == v["true"]), None)
    if wrong is not None:
        found = f"labelled {given[wrong]}" if wrong in given else "not in the training split"
        raise ConfigError(f"--noise {path}: image {json.dumps(wrong)} ({json.dumps(noise[wrong])}) is {found} in "
                          f"this dataset; expected {expected}, for this dataset")
    return np.array([i in noise for i in train.image_ids], dtype=bool)


def per_class_report(labels: np.ndarray, threshold: np.ndarray, agree: np.ndarray, chosen: np.ndarray,
                     class_ids: list[str], noisy: np.ndarray | None) -> list[dict]:
    """One row per class: what cleaning kept of it (`per-class-k<k>.csv`)."""
    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(labels[mask], minlength=len(class_ids))

    columns = {"train_images": count(np.ones(len(labels), dtype=bool)), "agreeing": count(agree),
               "balanced": count(chosen), "filled_in": count(chosen & ~agree)}
    if noisy is not None:
        columns.update(noisy=count(noisy), noisy_removed=count(noisy & ~agree), clean_lost=count(~noisy & ~agree),
                       noisy_in_balanced=count(noisy & chosen))
    return [{"label": c, "class_id": class_ids[c], "threshold": round(float(threshold[c]), 6),
             **{name: int(values[c]) for name, values in columns.items()}} for c in range(len(class_ids))]


def predict(model: torch.nn.Module, split: SplitView, cfg: Config, dist: Dist,
            adjust: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max class (-1 if the image failed to load; of the logits minus `adjust` when given) and the
    probability of the given label per sample, gathered from all ranks; a progress bar (`run.progress`, main
    rank) over the pass (1.5M images per fold on AliProducts)."""
    loader = create_loader(split, cfg.data, train=False, rank=dist.rank, world=dist.world, seed=cfg.run.seed,
                           device=dist.device, channels_last=cfg.model.channels_last)
    bar = f"predict {split.name}" if dist.is_main and cfg.run.progress else None
    result = evaluate(model, loader, len(split), dist.device, progress=bar, adjust=adjust)
    return result.pred, result.conf


def write_subset(manifest: Manifest, directory: Path, rows: np.ndarray, note: str, dist: Dist) -> Manifest:
    """The main rank writes the subset; every rank then reads it. A directory that already holds these rows
    (a re-run) is left as it is; one holding other rows is another run's output and is refused."""
    existing = (directory / "manifest.parquet").is_file()
    barrier()  # every rank has looked before the main rank writes
    if existing:
        if not Manifest.load(directory).table.equals(manifest.table.filter(pa.array(rows))):
            raise ConfigError(f"--out: {directory} holds another subset (written with other settings); "
                              "use another --out or remove it")
    elif dist.is_main:
        manifest.subset(directory, rows, note)
    barrier()
    return Manifest.load(directory)


def clean(cfg: Config, dist: Dist, *, out: Path, k: int = 3, noise: Path | None = None) -> dict:
    from fastprod.recipe.train import create_trainer

    if k < 1:
        raise ConfigError(f"--k: must be >= 1 (got {k})")
    manifest = Manifest.load(cfg.data.manifest)
    is_train = np.array(manifest.table["split"].to_pylist()) == cfg.data.train_split
    train = manifest.split(cfg.data.train_split)
    noisy = read_noise(noise, train, manifest.class_ids) if noise is not None else None  # before any training
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

    agree, threshold = agreement(train.labels, pred, conf, manifest.num_classes)
    chosen = balanced_subset(train.labels, conf, agree, k)
    paths = {"cleaned": out / "cleaned", "balanced": out / f"balanced-k{k}", "report": out / f"report-k{k}.json",
             "per_class": out / f"per-class-k{k}.csv"}
    for name, mask, note in (("cleaned", agree, "agrees with its label (per-class threshold)"),
                             ("balanced", chosen, f"top-{k} per class by confidence, agreeing samples first")):
        rows = ~is_train
        rows[is_train] = mask
        write_subset(manifest, paths[name], rows, note, dist)
    classes = per_class_report(train.labels, threshold, agree, chosen, manifest.class_ids, noisy)
    present = [c for c in classes if c["train_images"]]
    report = {
        "train_images": len(train), "kept": int(agree.sum()), "removed": int((~agree).sum()),
        "balanced": int(chosen.sum()), "k": k, "classes": len(present),
        "classes_in_cleaned": sum(c["agreeing"] > 0 for c in present),
        "classes_in_balanced": sum(c["balanced"] > 0 for c in present),
        "classes_filled_in": sum(c["filled_in"] > 0 for c in present),
        "kept_per_class_min": min(c["agreeing"] for c in present),
        "kept_per_class_median": float(np.median([c["agreeing"] for c in present])),
        "cleaned_manifest": str(paths["cleaned"]), "balanced_manifest": str(paths["balanced"]),
        "per_class_csv": str(paths["per_class"]),
    }
    if noisy is not None:
        report.update({key: sum(c[key] for c in classes)
                       for key in ("noisy", "noisy_removed", "clean_lost", "noisy_in_balanced")})
    if dist.is_main:
        with open(paths["per_class"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(classes[0]))
            writer.writeheader()
            writer.writerows(classes)
        paths["report"].write_text(json.dumps(report, indent=2) + "\n")
    return report


def run(args: argparse.Namespace) -> int:
    from fastprod.train.cli import with_trainer_setup

    return with_trainer_setup(args, lambda cfg, dist: clean(cfg, dist, out=Path(args.out), k=args.k, noise=args.noise))


def register(subparsers) -> None:
    from fastprod.train.cli import add_arguments

    parser = subparsers.add_parser("clean", help="2-fold cleaning and the balanced subset (seed section 4)")
    add_arguments(parser)
    parser.add_argument("--out", required=True, help="directory for the fold runs and the cleaned/balanced manifests")
    parser.add_argument("--k", type=int, default=3,
                        help="samples per class in the balanced subset DIR/balanced-k<k> (default 3)")
    parser.add_argument("--noise", type=Path, default=None,
                        help='noise.json of fastprod synth ({image_id: {"given": class_id, "true": class_id}} of the '
                             "mislabelled images), to report what cleaning removed")
    parser.set_defaults(func=run)
