"""Single best model vs plain average vs class-weighted ensemble, on images not used for fitting.

    .venv/bin/python bench/ensemble_report.py --checkpoints RUN1/final/model.pt RUN2/... \\
        --manifest PREPARED [--split val] [--flip] [--splits 20] --out DIR [--json FILE]
    .venv/bin/python bench/ensemble_report.py --simulate [--classes 500] [--per-class 20] [--models 4] --out DIR

Every checkpoint is exported (eager engine, the run's evaluation view; --flip adds the mirror view)
and scores the split with `fastprod score --probs`. Then, for each of --splits random stratified
halves of the split: the ensemble is fitted on half A (`fit`, which itself holds out 30% of A to
choose the power), the single best model is the one with the lowest error on A, and all three are
evaluated on half B. Reported: mean and standard deviation of the top-1 error on B over the splits.

--simulate replaces the models by synthetic probability matrices (no images): model m has a skill
per class drawn from Beta(2, 2) (so models are strong on different classes, as differently trained
architectures are), the true class's logit is raised by 6 x skill over standard normal noise of which
a fraction --shared (default 0.8) is common to all models (their errors are correlated, as real
models' are: with independent noise any average looks miraculous).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from results import write_json

from fastprod.config import load_config
from fastprod.score.engine import Engine, export_engine, find_run_config
from fastprod.score.ensemble import argmax_and_finite, ensemble_errors, fit, load_preds, stratified_holdout
from fastprod.score.items import items_from_manifest
from fastprod.score.score import score
from fastprod.score.tta import Views


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", type=Path)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--simulate", action="store_true", help="synthetic probabilities instead of checkpoints")
    ap.add_argument("--classes", type=int, default=500)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--shared", type=float, default=0.8, help="simulate: fraction of logit-noise variance shared by the models")
    ap.add_argument("--split", default="val")
    ap.add_argument("--flip", action="store_true", help="TTA: add the mirrored view")
    ap.add_argument("--splits", type=int, default=20, help="random A/B halves to average over")
    ap.add_argument("--min-count", type=int, default=3)
    ap.add_argument("--shrink", type=float, nargs="+", default=[0.0], help="shrinkage values for fit (chosen on A's held-out part)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.simulate:
        paths, labels = simulate(args.out, args.models, args.classes, args.per_class, args.shared)
        source = f"simulated: {args.models} models, {args.classes} classes x {args.per_class} images"
    else:
        paths, labels = score_checkpoints(args)
        source = f"{args.manifest} ({args.split})"
    preds = load_preds(paths)
    arg, _ = argmax_and_finite(preds)
    M, C = len(preds), preds[0].shape[1]
    results = {"single best (chosen on A)": [], "plain average": [], "class-weighted": [], "chosen power": []}
    for seed in range(args.splits):
        in_b = stratified_holdout(labels, 0.5, seed=1000 + seed)
        fit_labels = np.where(in_b, -1, labels)  # fit sees only half A
        fitted = fit(preds, fit_labels, scaling="power", holdout=0.3, min_count=args.min_count, seed=seed,
                     shrinks=tuple(args.shrink))
        a_rows, b_rows = np.flatnonzero(~in_b), np.flatnonzero(in_b)
        best = int(np.argmin([(arg[m, a_rows] != labels[a_rows]).mean() for m in range(M)]))
        avg, cw = ensemble_errors(preds, b_rows, labels, [np.full((M, C), 1.0 / M), fitted["weights"]])
        results["single best (chosen on A)"].append(float((arg[best, b_rows] != labels[b_rows]).mean()))
        results["plain average"].append(float(avg))
        results["class-weighted"].append(float(cw))
        results["chosen power"].append(fitted["value"])
    each = [float((arg[m] != labels).mean()) for m in range(M)]
    rows = [{"method": k, "top1_error_B_mean": statistics.mean(v), "top1_error_B_std": statistics.pstdev(v)}
            for k, v in results.items()]
    print(f"{source}: {M} models, {len(labels)} images, {C} classes, {args.splits} random halves; "
          f"each model's error on the whole split: {[round(e, 3) for e in each]}")
    print("| method | top-1 error on B (mean ± std) |\n|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['top1_error_B_mean']:.4f} ± {r['top1_error_B_std']:.4f} |")
    write_json(args.json, "ensemble_report", f"Ensembles of {M} models, {source}",
               "single best model chosen on the fitting half", rows,
               {"label": "method", "value": "top1_error_B_mean", "ylabel": "top-1 error on B"})
    return 0


def simulate(out: Path, models: int, classes: int, per_class: int, shared: float) -> tuple[list[Path], np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    n = len(labels)
    paths = []
    common = rng.normal(size=(n, classes)).astype(np.float32)
    for m in range(models):
        skill = rng.beta(2, 2, size=classes)
        logits = np.sqrt(shared) * common + np.sqrt(1 - shared) * rng.normal(size=(n, classes)).astype(np.float32)
        logits[np.arange(n), labels] += 6 * skill[labels]
        p = np.exp(logits - logits.max(1, keepdims=True))
        d = out / "sim" / str(m)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "probs.npy", (p / p.sum(1, keepdims=True)).astype(np.float16))
        pq.write_table(pa.table({"image_id": [str(i) for i in range(n)], "path": [""] * n,
                                 "label": pa.array(labels, pa.int32())}), d / "images.parquet")
        paths.append(d)
    return paths, labels


def score_checkpoints(args) -> tuple[list[Path], np.ndarray]:
    if not args.checkpoints or not args.manifest:
        raise SystemExit("give --checkpoints and --manifest, or --simulate")
    items = items_from_manifest(args.manifest, args.split)
    paths = []
    for i, ckpt in enumerate(args.checkpoints):
        pred_dir = args.out / "preds" / str(i)
        if not (pred_dir / "summary.json").is_file():
            cfg = load_config(find_run_config(ckpt))
            views = Views(cfg.data.image_size, (cfg.data.eval_resize,), ("center",), (False, True) if args.flip else (False,))
            engine = Engine(export_engine([ckpt], args.out / "engines" / str(i), views=views), "cpu")
            score(engine, items, pred_dir, save_probs=True, workers=2, progress=False)
        paths.append(pred_dir)
        print(f"model {i}: {ckpt} -> {json.loads((pred_dir / 'summary.json').read_text())}")
    return paths, items.labels


if __name__ == "__main__":
    sys.exit(main())
