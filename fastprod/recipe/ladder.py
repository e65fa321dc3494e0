"""The ablation ladder (the seed's error table): each step adds one technique to the last, all with
the same budget, on one dataset with label noise and a long tail: synthesised (the default), or a user's own
prepared dataset.

    fastprod ladder --out runs/ladder [--seeds 2] [--config configs/ladder.yaml] [--set key=value ...]
    fastprod ladder --manifest DIR [--noise-truth FILE] --out runs/my-ladder ...

First the reference: plain cross entropy on unaugmented images, uniform sampling (`REFERENCE`). Then the
seed's steps: baseline (rotation + random-sized crop, SGD momentum, SGDR) -> + cutout, perspective, flip
-> + weight decay 3e-4 -> + dropout 0.5 -> + SCE -> + O2U weights -> + 2-fold cleaning and a finetune of the
previous step's model on the balanced subset. Then the long-tail options (`TAIL_STEPS`), each trained from
scratch on the O2U step's or the reference's settings: class-aware sampling, the logit-adjusted loss. Writes
`ladder.md` and `ladder.json` (validation top-1 error per step: the mean over `--seeds` training seeds, each
seed's, and relative to the reference; the many / medium / few-shot split of
`fastprod.train.evaluate.SHOT_GROUPS`; the error after post-hoc logit adjustment) under `--out`. The
noise-detection figures (O2U's AUROC, what cleaning removed) need the true labels: the synthetic dataset's
`noise.json`, or `--noise-truth FILE` with {image_id: true class_id} for the training images (those it leaves
out count as correctly labelled). One seed's differences are mostly noise at this size (seeds of one step
differ by several points), hence the mean. Every run is an ordinary, resumable run directory
(`step-N/seed-S`), so an interrupted ladder continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fastprod.config import Config, ConfigError, load_config
from fastprod.data.manifest import Manifest
from fastprod.losses.prior import logit_offset
from fastprod.files import write_json
from fastprod.models import create_model
from fastprod.recipe.clean import clean, predict
from fastprod.recipe.o2u import noise_detection
from fastprod.train.distributed import Dist, barrier
from fastprod.train.evaluate import SHOT_GROUPS, shot_group_errors

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
CLEANING = ("+ 2-fold cleaning, finetune on the balanced subset", [])  # trains from the O2U step's models
# the reference the ladder is measured against: plain cross entropy on the unaugmented images (no rotation, the
# whole image at its aspect ratio instead of a random-sized crop), uniform sampling (step `reference`)
REFERENCE = ("reference: plain cross entropy, no augmentation", [
    "data.augment.rotation_p=0", "data.augment.crop_scale=[1.0,1.0]", "data.augment.crop_ratio=[1.0,1.0]"])
# beyond the seed: the long tail, where the ladder shows the error left; each is one alternative trained from
# scratch, added to the settings of the O2U step ("o2u") or of the reference ("reference"), not to each other
TAIL_STEPS = [
    ("+ class-aware sampling (sqrt of class frequency)", "o2u", ["data.sampler=sqrt"]),
    ("+ logit-adjusted loss (tau 1: balanced softmax)", "o2u", ["loss.logit_adjust_tau=1"]),
    ("+ logit-adjusted loss, without dropout", "o2u", ["loss.logit_adjust_tau=1", "model.drop_rate=0"]),
    ("reference + logit-adjusted loss (tau 1)", "reference", ["loss.logit_adjust_tau=1"]),
    ("reference + logit-adjusted loss + O2U weights", "reference", ["loss.logit_adjust_tau=1", "o2u.enabled=true"]),
    ("reference + class-aware sampling (sqrt)", "reference", ["data.sampler=sqrt"]),
    ("+ O2U scores standardised over all samples, not per class", "o2u", ["o2u.per_class=false"]),
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


def truth_to_noise(truth_file: Path, manifest: Path, out: Path) -> Path:
    """`--noise-truth` ({image_id: true class_id} for training images) as the noise file `clean --noise` reads
    ({image_id: {"given", "true"}} for the mislabelled ones only), written to `out`."""
    data = Manifest.load(manifest)
    train = data.split("train")
    given = {i: data.class_ids[label] for i, label in zip(train.image_ids, train.labels)}
    try:
        truth = json.loads(Path(truth_file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--noise-truth {truth_file}: cannot read it as JSON ({err})") from None
    expected = "a JSON object {image_id: true class_id} over the training images"
    if not isinstance(truth, dict):
        raise ConfigError(f"--noise-truth {truth_file}: a JSON {type(truth).__name__}, expected {expected}")
    known = set(data.class_ids)
    for image_id, true in truth.items():
        if image_id not in given or true not in known:
            what = "is not a training image" if image_id not in given else f"has an unknown class {json.dumps(true)}"
            raise ConfigError(f"--noise-truth {truth_file}: {json.dumps(image_id)} {what} of {manifest}; "
                              f"expected {expected}")
    noise = {i: {"given": given[i], "true": t} for i, t in truth.items() if given[i] != t}
    write_json(out / "noise.json", noise)
    return out / "noise.json"


def run_ladder(config: Path, overrides: list[str], out: Path, dist: Dist, manifest: Path, noise_file: Path | None,
               k: int, finetune_epochs: int, seeds: int) -> list[dict]:
    from fastprod.recipe.train import create_trainer

    last = len(STEPS) - 1  # the O2U step

    def settings(step: int | str) -> list[str]:
        """The step's overrides: the seed's steps are cumulative, each tail step is added to its base's."""
        if step == "reference":
            return REFERENCE[1]
        if step <= last + 1:  # the cleaning finetune trains the O2U step's models on
            return [o for _, step_overrides in STEPS[: step + 1] for o in step_overrides]
        _, base, own = TAIL_STEPS[step - last - 2]
        return [*settings(last if base == "o2u" else "reference"), *own]

    def cfg_for(step: int | str, seed: int, extra: list[str]) -> Config:
        return load_config(config, [*BASELINE, *settings(step), *overrides, f"data.manifest={manifest}",
                                    f"run.seed={seed}", f"run.dir={out / f'step-{step}' / f'seed-{seed}'}", *extra])

    def row(name: str, step: int | str, configs: list[Config], **extra) -> dict:
        errors = [create_trainer(cfg, dist).fit()["val_top1_error"] for cfg in configs]
        return {"step": name, "val_top1_error": float(np.mean(errors)), "seed_errors": errors,
                "run": str(out / f"step-{step}"), **extra}

    rows = [row(REFERENCE[0], "reference", [cfg_for("reference", seed, []) for seed in range(seeds)])]
    rows += [row(name, step, [cfg_for(step, seed, []) for seed in range(seeds)]) for step, (name, _) in enumerate(STEPS)]
    noisy = set(json.loads(noise_file.read_text())) if noise_file else set()
    report = clean(cfg_for(last, 0, [f"run.dir={out / 'clean'}"]), dist, out=out / "clean", k=k, noise=noise_file)
    lr = cfg_for(last, 0, []).optim.lr / 10
    finetunes = [cfg_for(last + 1, seed, [
        f"data.manifest={report['balanced_manifest']}", f"model.init_from={out / f'step-{last}' / f'seed-{seed}' / 'final' / 'model.pt'}",
        f"optim.lr={lr}", f"schedule.epochs={finetune_epochs}", "o2u.enabled=false",
        f"data.batch_size={max(1, min(16, report['balanced']))}"]) for seed in range(seeds)]
    rows.append(row(f"{CLEANING[0]} (top-{k} per class)", last + 1, finetunes, cleaning=report))
    rows += [row(name, step, [cfg_for(step, seed, []) for seed in range(seeds)])
             for step, (name, *_) in enumerate(TAIL_STEPS, start=last + 2)]
    for r in rows:  # how well each O2U step's score and weights find the noise, per cycle (seed 0)
        cycles = sorted((Path(r["run"]) / "seed-0" / "o2u").glob("cycle-*.csv"), key=lambda p: int(p.stem[6:]))
        if noisy and cycles:
            r["o2u_noise_detection"] = [noise_detection(csv, noisy) for csv in cycles]
    for r in rows:  # why a step helps or not: what the final models fit and where they err
        per_seed = [diagnose(Path(r["run"]) / f"seed-{seed}", manifest, noisy, dist) for seed in range(seeds)]
        r["diagnosis"] = {key: float(np.mean([d[key] for d in per_seed])) if per_seed[0][key] is not None else None
                          for key in per_seed[0]}
    return rows


def diagnose(run: Path, manifest: Path, noisy: set[str], dist: Dist) -> dict:
    """The final model of `run` on the full training split and the validation split: the fraction of
    mislabelled training images it predicts as their wrong label (memorised noise; None without the true
    labels), its error on the correctly labelled ones, and validation error per shot group of the full
    training split (`val_error_many` ...; a finetune's own subset is balanced); and the validation error after
    post-hoc logit adjustment with tau 1 (`val_error_posthoc`, `..._few`: the arg-max of the logits minus the log
    prior of the full training split, what `fastprod export --logit-adjust 1` scores)."""
    cfg = load_config(run / "resolved.yaml", [f"data.manifest={manifest}", f"model.init_from={run / 'final' / 'model.pt'}"])
    data = Manifest.load(manifest)
    model = create_model(cfg.model, data.num_classes).to(dist.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train, val = data.split(cfg.data.train_split), data.split(cfg.data.val_split)
    train_pred, _ = predict(model, train, cfg, dist)
    val_pred, _ = predict(model, val, cfg, dist)
    sizes = np.bincount(train.labels, minlength=data.num_classes)
    adjusted, _ = predict(model, val, cfg, dist, adjust=logit_offset(torch.from_numpy(sizes), 1.0))
    is_noisy = np.array([i in noisy for i in train.image_ids])
    wrong, val_wrong = train_pred != train.labels, val_pred != val.labels
    everything = np.ones(len(val_wrong), dtype=bool)
    groups = shot_group_errors(val_wrong, everything, val.labels, sizes)
    posthoc = shot_group_errors(adjusted != val.labels, everything, val.labels, sizes)
    return {"noisy_fitted": float(np.mean(~wrong[is_noisy])) if is_noisy.any() else None,
            "clean_train_error": float(np.mean(wrong[~is_noisy])),
            **{f"val_error_{name}": groups[f"top1_error_{name}"] for name in SHOT_GROUPS},
            "val_error_posthoc": float(np.mean(adjusted != val.labels)), "val_error_posthoc_few": posthoc["top1_error_few"]}


def write_table(rows: list[dict], out: Path, setup: str) -> str:
    seeds = len(rows[0]["seed_errors"])
    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    groups = " / ".join(f"{name} ({low}{'+' if high is None else f'-{high}'})" for name, (low, high) in SHOT_GROUPS.items())
    lines = [f"Ablation ladder — {setup}", "",
             f"| step | val top-1 error (mean of {seeds} seeds) | vs the reference | per seed | {groups} training images "
             "per class | post-hoc logit adjustment (tau 1): error / few | noisy train labels fitted | clean train error |",
             "|---|---|---|---|---|---|---|---|"]
    reference = rows[0]["val_top1_error"]
    for r in rows:
        d = r["diagnosis"]
        relative = "-" if r is rows[0] or reference == 0 else f"{100 * (r['val_top1_error'] / reference - 1):+.0f}%"
        lines.append(f"| {r['step']} | {100 * r['val_top1_error']:.2f}% | {relative} | "
                     f"{' / '.join(f'{100 * e:.1f}' for e in r['seed_errors'])} | "
                     f"{' / '.join(percent(d[f'val_error_{name}']) for name in SHOT_GROUPS)} | "
                     f"{percent(d['val_error_posthoc'])} / {percent(d['val_error_posthoc_few'])} | "
                     f"{percent(d['noisy_fitted'])} | {percent(d['clean_train_error'])} |")
    def aurocs(detection: list[dict], key: str) -> str:
        return ", ".join(f"{d[key]:.3f}" for d in detection if d[key] is not None)

    detected = [r for r in rows if r.get("o2u_noise_detection")]
    if detected:
        lines += ["", "O2U vs the injected noise (seed 0), AUROC per SGDR cycle of the score / of the weights the next "
                  "cycle applies:"]
        lines += [f"- {r['step']}: {aurocs(r['o2u_noise_detection'], 'auroc')} / "
                  f"{aurocs(r['o2u_noise_detection'], 'weight_auroc')}" for r in detected]
    cleaning = next((r["cleaning"] for r in rows if r.get("cleaning")), {})
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
        if args.manifest:
            manifest = Path(args.manifest)
            data = Manifest.load(manifest)
            noise = None
            if args.noise_truth:
                out.mkdir(parents=True, exist_ok=True)
                noise = truth_to_noise(Path(args.noise_truth), manifest, out) if dist.is_main else out / "noise.json"
            dataset = f"{manifest}: {data.num_classes} classes / {len(data.split('train'))} training images"
        else:
            manifest = ladder_data(out, args) if dist.is_main else out / "data" / "prepared"
            noise = out / "data" / "raw" / "noise.json"
            dataset = (f"synthetic {args.classes} classes / {args.train_images} training images / {args.noise:.0%} "
                       f"label noise")
        barrier()
        rows = run_ladder(Path(args.config), args.overrides, out, dist, manifest, noise, args.k, args.finetune_epochs,
                          args.seeds)
        setup = f"{cfg.model.name} at {cfg.data.image_size}px, {cfg.schedule.epochs} epochs per step and seed, {dataset}"
        if dist.is_main:
            print(write_table(rows, out, setup))
        return {"ladder": str(out / "ladder.md")}

    return with_trainer_setup(args, job)


def register(subparsers) -> None:
    from fastprod.train.cli import add_arguments

    parser = subparsers.add_parser("ladder", help="the seed's ablation ladder on a synthetic or a prepared dataset")
    add_arguments(parser, default_config="configs/ladder.yaml")
    parser.add_argument("--out", default="runs/ladder")
    parser.add_argument("--manifest", default=None, help="a prepared dataset (fastprod prepare) instead of synthetic")
    parser.add_argument("--noise-truth", default=None, metavar="FILE",
                        help="with --manifest: {image_id: true class_id} of the training images (noise figures)")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--train-images", type=int, default=1200)
    parser.add_argument("--val-per-class", type=int, default=25)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="kept samples per class in the balanced subset")
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per step (the table shows their mean)")
    parser.set_defaults(func=run)
