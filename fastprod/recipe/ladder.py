"""The ablation ladder (the seed's error table): each step adds one technique to the last, all with
the same budget, on one synthetic dataset with injected label noise and a long tail.

    fastprod ladder --out runs/ladder [--seeds 2] [--config configs/ladder.yaml] [--set key=value ...]

Steps: baseline (rotation + random-sized crop, SGD momentum, SGDR) -> + cutout, perspective, flip
-> + weight decay 3e-4 -> + dropout 0.5 -> + SCE -> + O2U weights -> + 2-fold cleaning and a
finetune of the previous step's model on the balanced subset. Writes `ladder.md` and `ladder.json`
(validation top-1 error per step: the mean over `--seeds` training seeds, and each seed's) under
`--out`. One seed's differences are mostly noise at this size (seeds of one step differ by several
points), hence the mean. Every run is an ordinary, resumable run directory
(`step-N/seed-S`), so an interrupted ladder continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fastprod.config import Config, load_config
from fastprod.data.manifest import Manifest
from fastprod.models import create_model
from fastprod.recipe.clean import clean, predict
from fastprod.recipe.o2u import noise_detection
from fastprod.train.distributed import Dist, barrier

BASELINE = ["data.augment.cutout_p=0", "data.augment.perspective_p=0", "data.augment.hflip_p=0",
            "optim.weight_decay=0", "model.drop_rate=0", "loss.name=ce", "o2u.enabled=false"]
STEPS = [
    ("baseline: rotation + random-sized crop, SGD momentum, SGDR", []),
    ("+ cutout, perspective, flip", ["data.augment.cutout_p=0.5", "data.augment.perspective_p=0.3",
                                     "data.augment.hflip_p=0.5"]),
    ("+ weight decay 3e-4", ["optim.weight_decay=3e-4"]),
    ("+ dropout 0.5 after pooling", ["model.drop_rate=0.5"]),
    ("+ symmetric cross entropy", ["loss.name=sce"]),
    ("+ O2U sample weights", ["o2u.enabled=true"]),
]


def ladder_data(out: Path, args: argparse.Namespace) -> Path:
    """Synthesise and prepare the ladder's dataset once (re-used on re-runs)."""
    from fastprod.data.prepare import prepare
    from fastprod.data.synth import synthesize

    raw, prepared = out / "data" / "raw", out / "data" / "prepared"
    if not (raw / "train.json").exists():
        synthesize(raw, classes=args.classes, train_images=args.train_images, val_per_class=args.val_per_class,
                   noise=args.noise, seed=args.seed, size=(64, 64), corrupt=0, workers=None)
    if not (prepared / "manifest.parquet").exists():
        prepare(raw, prepared)
    return prepared


def run_ladder(config: Path, overrides: list[str], out: Path, dist: Dist, manifest: Path, noise_file: Path,
               k: int, finetune_epochs: int, seeds: int) -> list[dict]:
    from fastprod.recipe.train import create_trainer

    def cfg_for(step: int, seed: int, extra: list[str]) -> Config:
        cumulative = [o for _, step_overrides in STEPS[: step + 1] for o in step_overrides]
        return load_config(config, [*BASELINE, *cumulative, *overrides, f"data.manifest={manifest}",
                                    f"run.seed={seed}", f"run.dir={out / f'step-{step}' / f'seed-{seed}'}", *extra])

    def row(name: str, step: int, configs: list[Config], **extra) -> dict:
        errors = [create_trainer(cfg, dist).fit()["val_top1_error"] for cfg in configs]
        return {"step": name, "val_top1_error": float(np.mean(errors)), "seed_errors": errors,
                "run": str(out / f"step-{step}"), **extra}

    rows = [row(name, step, [cfg_for(step, seed, []) for seed in range(seeds)]) for step, (name, _) in enumerate(STEPS)]
    last = len(STEPS) - 1
    noisy = set(json.loads(noise_file.read_text())) if noise_file.exists() else set()
    if noisy:  # how well the O2U score finds the injected noise, per cycle (seed 0)
        cycles = sorted((out / f"step-{last}" / "seed-0" / "o2u").glob("cycle-*.csv"), key=lambda p: int(p.stem[6:]))
        rows[last]["o2u_noise_detection"] = [noise_detection(csv, noisy) for csv in cycles]
    report = clean(cfg_for(last, 0, [f"run.dir={out / 'clean'}"]), dist, out=out / "clean", k=k, noise=noise_file)
    lr = cfg_for(last, 0, []).optim.lr / 10
    finetunes = [cfg_for(last + 1, seed, [
        f"data.manifest={report['balanced_manifest']}", f"model.init_from={out / f'step-{last}' / f'seed-{seed}' / 'final' / 'model.pt'}",
        f"optim.lr={lr}", f"schedule.epochs={finetune_epochs}", "o2u.enabled=false",
        f"data.batch_size={max(1, min(16, report['balanced']))}"]) for seed in range(seeds)]
    rows.append(row(f"+ 2-fold cleaning, finetune on the balanced subset (top-{k} per class)", last + 1, finetunes,
                    cleaning=report))
    for step, r in enumerate(rows):  # why a step helps or not: what the final models fit and where they err
        per_seed = [diagnose(out / f"step-{step}" / f"seed-{seed}", manifest, noisy, dist) for seed in range(seeds)]
        r["diagnosis"] = {key: float(np.mean([d[key] for d in per_seed])) for key in per_seed[0]}
    return rows


def diagnose(run: Path, manifest: Path, noisy: set[str], dist: Dist) -> dict:
    """The final model of `run` on the full training split and the validation split: the fraction of
    mislabelled training images it predicts as their wrong label (memorised noise), its error on the
    correctly labelled ones, and validation error on the head and tail classes (training-set size
    above / at most the median)."""
    cfg = load_config(run / "resolved.yaml", [f"data.manifest={manifest}", f"model.init_from={run / 'final' / 'model.pt'}"])
    data = Manifest.load(manifest)
    model = create_model(cfg.model, data.num_classes).to(dist.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train, val = data.split(cfg.data.train_split), data.split(cfg.data.val_split)
    train_pred, _ = predict(model, train, cfg, dist)
    val_pred, _ = predict(model, val, cfg, dist)
    is_noisy = np.array([i in noisy for i in train.image_ids])
    sizes = np.bincount(train.labels, minlength=data.num_classes)
    tail = sizes[val.labels] <= np.median(sizes)
    wrong, val_wrong = train_pred != train.labels, val_pred != val.labels
    return {"noisy_fitted": float(np.mean(~wrong[is_noisy])) if is_noisy.any() else float("nan"),
            "clean_train_error": float(np.mean(wrong[~is_noisy])),
            "val_error_head": float(np.mean(val_wrong[~tail])), "val_error_tail": float(np.mean(val_wrong[tail]))}


def write_table(rows: list[dict], out: Path, setup: str) -> str:
    seeds = len(rows[0]["seed_errors"])
    lines = [f"Ablation ladder — {setup}", "",
             f"| step | val top-1 error (mean of {seeds} seeds) | per seed | head / tail classes | "
             "noisy train labels fitted | clean train error |", "|---|---|---|---|---|---|"]
    for r in rows:
        d = r["diagnosis"]
        lines.append(f"| {r['step']} | {100 * r['val_top1_error']:.2f}% | "
                     f"{' / '.join(f'{100 * e:.1f}' for e in r['seed_errors'])} | "
                     f"{100 * d['val_error_head']:.1f}% / {100 * d['val_error_tail']:.1f}% | "
                     f"{100 * d['noisy_fitted']:.1f}% | {100 * d['clean_train_error']:.1f}% |")
    detection = next((r["o2u_noise_detection"] for r in rows if r.get("o2u_noise_detection")), None)
    if detection:
        lines += ["", "O2U score vs the injected noise (seed 0), AUROC per SGDR cycle: "
                  + ", ".join(f"{d['auroc']:.3f}" for d in detection if d["auroc"] is not None)]
    cleaning = rows[-1].get("cleaning", {})
    if cleaning.get("noisy") is not None:
        lines += ["", f"Cleaning removed {cleaning['noisy_removed']} of {cleaning['noisy']} noisy training labels and "
                  f"{cleaning['clean_lost']} clean ones; the balanced subset has {cleaning['balanced']} images in "
                  f"{cleaning['classes_in_balanced']} classes."]
    table = "\n".join(lines) + "\n"
    (out / "ladder.md").write_text(table)
    (out / "ladder.json").write_text(json.dumps({"setup": setup, "steps": rows}, indent=2) + "\n")
    return table


def run(args: argparse.Namespace) -> int:
    from fastprod.train.cli import with_trainer_setup

    out = Path(args.out)

    def job(cfg: Config, dist: Dist) -> dict:
        manifest = ladder_data(out, args) if dist.is_main else out / "data" / "prepared"
        barrier()
        rows = run_ladder(Path(args.config), args.overrides, out, dist, manifest, out / "data" / "raw" / "noise.json",
                          args.k, args.finetune_epochs, args.seeds)
        setup = (f"{cfg.model.name} at {cfg.data.image_size}px, {cfg.schedule.epochs} epochs per step and seed, synthetic "
                 f"{args.classes} classes / {args.train_images} training images / {args.noise:.0%} label noise")
        if dist.is_main:
            print(write_table(rows, out, setup))
        return {"ladder": str(out / "ladder.md")}

    return with_trainer_setup(args, job)


def register(subparsers) -> None:
    from fastprod.train.cli import add_arguments

    parser = subparsers.add_parser("ladder", help="the seed's ablation ladder on a synthetic noisy dataset")
    add_arguments(parser, default_config="configs/ladder.yaml")
    parser.add_argument("--out", default="runs/ladder")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--train-images", type=int, default=1200)
    parser.add_argument("--val-per-class", type=int, default=25)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="kept samples per class in the balanced subset")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per step (the table shows their mean)")
    parser.set_defaults(func=run)
