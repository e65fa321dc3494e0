"""The LR range test that picks the seed's initial learning rate (seed section 1).

The LR rises exponentially from `start` to `end` over `epochs` epochs of ordinary training steps
(`Trainer.train_step`, so the model, loss, optimizer and DeepSpeed engine are the run's own); the
seed used 1e-6 -> 1e1 over 2 epochs. The loss is smoothed by an exponential moving average with bias
correction, and the test stops once it diverges: a non-finite loss, or a smoothed loss above
`DIVERGENCE` x the best smoothed loss so far.

    fastprod lr-find --config CONFIG.yaml [--set key=value ...] [--out DIR] [--start 1e-6 --end 10 --epochs 2]

The suggested LR is the middle of the steepest descent of the smoothed loss, robust to the noise of
the first batches (which on a real dataset once made the start LR look steepest):
- the first `warmup_steps` steps (two EMA time constants) are skipped: there the smoothed loss is
  still mostly the first batches' noise and early transients (shaded in the plot);
- only the steps up to the minimum of the smoothed loss after the warm-up count (past it the loss
  diverges);
- the slope is a secant over `SPAN_DECADES` (0.5) decades of LR (the whole counted range if that is
  shorter), never between neighbouring steps; the suggestion is the LR halfway along the steepest
  such secant, moved back by the EMA's lag (beta / (1 - beta) steps), so it is not biased upwards.
If the minimum is the first step after the warm-up, the curve never descended and the suggestion is
`start` (lower it). The minimum-loss LR / 10, the other common rule, is reported and drawn too.
Writes `lr_find.csv` (step, lr, raw and smoothed loss), `lr_find.png` and `lr_find.json` to `--out`
(default `<run.dir>-lr-find`), plus the `resolved.yaml` of the model it trained; it never loads or
saves a checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from fastprod.config import Config, ConfigError
from fastprod.train.distributed import Dist, all_reduce

DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this multiple of the best smoothed loss
MAX_WINDOW = 50  # EMA time constant in steps at most (beta 0.98, as fastai) ...
WINDOW_FRACTION = 0.05  # ... and at most this fraction of the planned steps, so its lag stays small in log(LR)
SPAN_DECADES = 0.5  # the descent's slope is measured over at least this much of log10(LR), never between neighbours


def lr_at(step: int, total: int, start: float, end: float) -> float:
    """The LR of step `step` of `total`: start * (end / start) ** (step / (total - 1))."""
    return start * (end / start) ** (step / max(total - 1, 1))


def smoothing_beta(total: int) -> float:
    """EMA factor 1 - 1/window with window = min(MAX_WINDOW, WINDOW_FRACTION * total), at least 1 step."""
    window = max(1.0, min(MAX_WINDOW, WINDOW_FRACTION * total))
    return 1.0 - 1.0 / window


def warmup_steps(beta: float) -> int:
    """Two EMA time constants: before them the smoothed loss is mostly the first batches' noise."""
    return round(2 / (1 - beta))


def suggest(lrs: np.ndarray, smoothed: np.ndarray, beta: float) -> dict:
    """The suggestion rule (module docstring) on the finite points of a curve smoothed with EMA factor `beta`."""
    skip = min(warmup_steps(beta), len(lrs) - 1)
    best = skip + int(np.argmin(smoothed[skip:]))
    if best == skip:
        suggested, rule = float(lrs[0]), "no descent after the warm-up: the smoothed loss only rises, so start is suggested"
    else:
        x, y = np.log10(lrs[skip:best + 1]), smoothed[skip:best + 1]
        span = min(SPAN_DECADES, x[-1] - x[0])
        ends = np.searchsorted(x, x + span * (1 - 1e-9))  # the first point at least `span` above each one
        starts = np.flatnonzero(ends < len(x))
        slopes = (y[ends[starts]] - y[starts]) / (x[ends[starts]] - x[starts])
        first = starts[int(np.argmin(slopes))]
        lag = round(beta / (1 - beta))  # steps the EMA trails a steadily changing loss by
        suggested = float(lrs[max(0, skip + (first + ends[first]) // 2 - lag)])
        rule = (f"steepest descent of the smoothed loss over {span:.2g} decades of LR after a {skip}-step warm-up "
                f"and before its minimum, {lag} steps earlier for the smoothing's lag")
    return {"suggested_lr": suggested, "rule": rule, "min_loss_lr": float(lrs[best]),
            "min_loss_lr_div10": float(lrs[best]) / 10, "min_smoothed_loss": float(smoothed[best]), "warmup_steps": skip}


def lr_find(cfg: Config, dist: Dist, *, out: Path, start: float, end: float, epochs: float) -> dict:
    """Run the range test with `cfg`'s model and data, writing only under `out`; returns the summary."""
    from tqdm import tqdm

    from fastprod.train.engine import Trainer

    if not 0 < start < end:
        raise ConfigError(f"--start/--end: need 0 < start < end (got {start:g}, {end:g})")
    if epochs <= 0:
        raise ConfigError(f"--epochs: must be > 0 (got {epochs:g})")
    out = Path(out)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(out)),
                              o2u=dataclasses.replace(cfg.o2u, enabled=False))  # plain per-sample loss
    trainer = Trainer(cfg, dist)
    total = max(1, round(epochs * trainer.iters_per_epoch))
    beta = smoothing_beta(total)
    rows: list[tuple[int, float, float, float]] = []  # step, lr, loss, smoothed
    avg, best, stop_reason = 0.0, math.inf, None
    bar = tqdm(total=total, unit="step", dynamic_ncols=True, disable=not (dist.is_main and cfg.run.progress))
    epoch = 0
    while len(rows) < total and stop_reason is None:
        trainer.train_loader.set_epoch(epoch)
        for batch in trainer.train_loader:
            step = len(rows)
            lr = lr_at(step, total, start, end)
            loss = trainer.train_step(batch, lr)
            if loss is None:  # non-finite on some rank: every rank gets None
                rows.append((step, lr, math.nan, math.nan))
                stop_reason = f"non-finite loss at lr {lr:.3g}"
                break
            loss = all_reduce([float(loss)], dist.device)[0] / dist.world  # same curve, same stop on every rank
            avg = beta * avg + (1 - beta) * loss
            smoothed = avg / (1 - beta ** (step + 1))
            rows.append((step, lr, loss, smoothed))
            best = min(best, smoothed)
            bar.update(1)
            bar.set_postfix(lr=f"{lr:.3g}", loss=f"{loss:.3f}", smooth=f"{smoothed:.3f}", refresh=False)
            if smoothed > DIVERGENCE * best:
                stop_reason = f"smoothed loss {smoothed:.3g} > {DIVERGENCE:g} x best {best:.3g} at lr {lr:.3g}"
                break
            if len(rows) == total:
                break
        epoch += 1
    bar.close()

    finite = [r for r in rows if math.isfinite(r[2])]
    if not finite:
        raise ConfigError(f"--start: the loss was non-finite from the first step (lr {start:g}); lower it")
    lrs, smooth = np.array([r[1] for r in finite]), np.array([r[3] for r in finite])
    summary = {
        **suggest(lrs, smooth, beta), "start": start, "end": end, "epochs": epochs, "planned_steps": total,
        "steps": len(rows), "stopped_early": stop_reason is not None, "stop_reason": stop_reason,
        "smoothing_beta": beta, "divergence_factor": DIVERGENCE, "model": cfg.model.name,
        "csv": str(out / "lr_find.csv"), "png": str(out / "lr_find.png"), "json": str(out / "lr_find.json"),
    }
    if dist.is_main:
        with open(out / "lr_find.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "lr", "loss", "smoothed_loss"])
            writer.writerows([step, repr(lr), repr(loss), repr(sm)] for step, lr, loss, sm in rows)
        plot_curve(rows, summary, out / "lr_find.png")
        (out / "lr_find.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"suggested LR {summary['suggested_lr']:.3g}: {summary['rule']} "
              f"(minimum-loss LR / 10 = {summary['min_loss_lr_div10']:.3g}); "
              + (f"stopped at step {len(rows)}/{total}: {stop_reason}" if stop_reason else f"ran all {total} steps"))
    return summary


def plot_curve(rows: list[tuple[int, float, float, float]], summary: dict, file: Path) -> None:
    """Raw and smoothed loss against the LR on a log axis, with the suggestion marked (headless)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    lr, loss, smooth = (np.array([r[i] for r in rows]) for i in (1, 2, 3))
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot(lr, loss, lw=0.8, alpha=0.4, color="tab:blue", label="loss")
    ax.plot(lr, smooth, lw=2, color="tab:blue", label=f"smoothed (EMA, beta {summary['smoothing_beta']:.3g})")
    ax.axvspan(lr[0], lr[summary["warmup_steps"]], color="0.9", label="warm-up, not used for the suggestion")
    suggested = summary["suggested_lr"]
    ax.axvline(suggested, color="tab:red", lw=1.5, label=f"suggested {suggested:.3g} (steepest descent)")
    ax.plot([suggested], [np.interp(np.log(suggested), np.log(lr), smooth)], "o", color="tab:red")
    ax.axvline(summary["min_loss_lr_div10"], color="tab:green", ls="--", lw=1,
               label=f"min-loss LR / 10 = {summary['min_loss_lr_div10']:.3g}")
    ax.plot([summary["min_loss_lr"]], [summary["min_smoothed_loss"]], "v", color="tab:green", label="smoothed minimum")
    finite = loss[np.isfinite(loss)]
    top = max(np.nanmax(smooth), np.nanmedian(finite))
    ax.set(xscale="log", xlim=(summary["start"], summary["end"]), ylim=(0.95 * finite.min(), 1.05 * top),
           xlabel="learning rate (log scale)", ylabel="training loss")
    stop = f"stopped: {summary['stop_reason']}" if summary["stopped_early"] else "ran to the end"
    ax.set_title(f"LR range test, {summary['model']}: {summary['steps']}/{summary['planned_steps']} steps; {stop}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.savefig(file, dpi=100)


def run(args: argparse.Namespace) -> int:
    from fastprod.train.cli import with_trainer_setup

    def job(cfg: Config, dist: Dist) -> dict:
        out = Path(args.out) if args.out else Path(f"{str(cfg.run.dir).rstrip('/')}-lr-find")
        return lr_find(cfg, dist, out=out, start=args.start, end=args.end, epochs=args.epochs)

    return with_trainer_setup(args, job)


def register(subparsers) -> None:
    from fastprod.train.cli import add_arguments

    parser = subparsers.add_parser("lr-find", help="LR range test: loss against an exponentially rising LR")
    add_arguments(parser)
    parser.add_argument("--out", default=None, help="output directory (default: <run.dir>-lr-find)")
    parser.add_argument("--start", type=float, default=1e-6, help="first LR (default 1e-6)")
    parser.add_argument("--end", type=float, default=10.0, help="last LR (default 10)")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs the LR takes from start to end (default 2)")
    parser.set_defaults(func=run)
