"""Cost against dataset size: every stage of the recipe at several training-set sizes N, all at AliProducts'
50,030 classes, with a fitted growth exponent per stage and a projection to the full 3M / 150k images.

    .venv/bin/python bench/scale.py [--sizes 60000 120000 250000] [--classes 50030] [--work DIR]
                                    [--only STAGE ...] [--redo] [--json FILE] [--plot FILE]

Each stage runs in its own process (`--stage`, below), so its figures are its own: wall time of the stage
itself (not the interpreter's start-up and imports), peak RSS (of the largest process of its tree: the
rusage `wait4` returns covers the stage's own pool workers; it includes the interpreter and its imports,
~0.65 GB once torch is in, and the pages of memory-mapped files the stage touches) and the bytes its
outputs take on disk. A stage that fails is recorded with its error; the others still run. N must be at
least --classes (the lognormal tail gives every class an image). Stages, in order (`STAGES`):
  synth            `fastprod synth` N training images at 32x32, the lognormal long tail; no validation split
  prepare          `fastprod prepare` over them: full probe
  prepare_cached   the same again: every probe answered by the size/mtime cache
  manifest_load    `Manifest.load` and the train split's columns
  write_ffcv       `fastprod write-ffcv` of the train split
  loader           PIL loader start-up to its first batch, one epoch's batch order, its resume state's size
  train_<impl>_d<D>_c<C>  STEPS steps of the classifier head + `loss.impl` (reference, fused, fused_linear) on
                   random [BATCH, D] features (D = 512: resnet18, 2048: resnet50) with C = --classes and,
                   as the baseline, C = 1,000: the backbone does not depend on C and is left out; seconds
                   per step (does not depend on N)
  o2u              O2U bookkeeping over N samples: two epochs of record/end_epoch, end_cycle with its CSV, the
                   state_dict's size
  checkpoint       save + load (fastprod.models.load_weights) of the --classes resnet50's fp32 weights
                   (does not depend on N)
  clean            `clean`'s bookkeeping over the train split: stratified halves, the kept mask from
                   synthetic fold predictions, the balanced top-3 subset, both subset manifests written
  score_probs      `fastprod score --probs` of N_val = N / 20 images (AliProducts' 150k : 3M; training images
                   stand in for the validation split) by a random-weight resnet10t engine exported once
                   (32 px, one view, the export not timed): [N_val, C] float16
  ensemble_inputs  (setup) 4 models' synthetic float16 [N_val, C] probabilities; labels 3 per class over the
                   first N_val / 3 classes (all 50,030 at 150k), the others unlabelled (global accuracy)
  ensemble_fit     `fastprod ensemble fit` of them
  ensemble_apply   `fastprod ensemble apply` of the fitted weights
Inputs are reused: one directory per size under --work (synth's images, the prepared manifest, the
engine), and a stage whose result is already there is not measured again unless --redo.

Output: a table (seconds, peak RSS, bytes per size; the exponent of each against N, fitted by least
squares on log-log; the projection to N = 3M, i.e. N_val = 150k, from that fit, or the median for the
stages whose work does not depend on N: `SIZE_FREE`), --json (bench/results.py's format:
one row per stage) and --plot (time and peak memory against N, log-log, one line per stage).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FULL_TRAIN, VAL_RATIO = 3_000_000, 20  # AliProducts: ~3M training and ~150k validation images
IMPLS, WIDTHS, BASE_CLASSES = ("reference", "fused", "fused_linear"), (512, 2048), 1000
ENSEMBLE_MODELS = 4
SIZE_FREE = ("train_", "checkpoint")  # stages whose work does not depend on N: projected by their median
STAGES = ("synth", "prepare", "prepare_cached", "manifest_load", "write_ffcv", "loader", "train", "o2u",
          "checkpoint", "clean", "score_probs", "ensemble_inputs", "ensemble_fit", "ensemble_apply")


def disk_bytes(*paths: Path) -> int:
    """Bytes of the files at or under `paths` (absent paths count 0)."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total


def reset_peak_rss() -> None:
    """Start this process's peak RSS over from its current RSS (Linux >= 4.0), so a part's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """This process's peak resident set so far (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def cli(*argv: str) -> None:
    """Run a `fastprod` command in this process; a non-zero exit is an error carrying its error line."""
    from fastprod.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    sys.stderr.write(err.getvalue())
    if code:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"fastprod {argv[0]} exited with {code}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- the stages: each runs in its own process and returns [{"stage", "seconds", "bytes", "note"}, ...] ----

def stage_synth(a: argparse.Namespace) -> list[dict]:
    data = fresh(a.dir / "data")
    s = timed(lambda: cli("synth", data, "--classes", a.classes, "--train-images", a.n, "--val-per-class", 0,
                          "--size", "32x32", "--workers", a.workers, "--tail", "lognormal"))
    return [{"stage": "synth", "seconds": s, "bytes": disk_bytes(data), "note": f"{a.n} images"}]


def _prepare(a: argparse.Namespace, name: str) -> list[dict]:
    out = a.dir / "prepared"
    s = timed(lambda: cli("prepare", a.dir / "data", "--out", out, "--workers", a.workers))
    return [{"stage": name, "seconds": s, "bytes": disk_bytes(out), "note": f"{a.n / s:.0f} img/s"}]


def stage_prepare(a: argparse.Namespace) -> list[dict]:
    fresh(a.dir / "prepared")
    return _prepare(a, "prepare")


def stage_prepare_cached(a: argparse.Namespace) -> list[dict]:
    return _prepare(a, "prepare_cached")


def stage_manifest_load(a: argparse.Namespace) -> list[dict]:
    from fastprod.data.manifest import Manifest

    start = time.perf_counter()
    manifest = Manifest.load(a.dir / "prepared")
    train = manifest.split("train")
    s = time.perf_counter() - start
    return [{"stage": "manifest_load", "seconds": s, "bytes": 0,
             "note": f"{len(train)} rows, {manifest.table.nbytes / max(1, len(manifest)):.0f} B/row in Arrow"}]


def stage_write_ffcv(a: argparse.Namespace) -> list[dict]:
    out = fresh(a.dir / "ffcv")
    s = timed(lambda: cli("write-ffcv", a.dir / "prepared", "--out", out, "--splits", "train", "--max-resolution", 64,
                          "--workers", a.workers))
    return [{"stage": "write_ffcv", "seconds": s, "bytes": disk_bytes(out), "note": ""}]


def stage_loader(a: argparse.Namespace) -> list[dict]:
    from fastprod.config import load_config
    from fastprod.data.loaders import create_loader
    from fastprod.data.manifest import Manifest

    cfg = load_config(None, [f"data.manifest={a.dir / 'prepared'}", "data.image_size=32", "data.batch_size=256",
                             "data.workers=0"]).data
    start = time.perf_counter()
    loader = create_loader(Manifest.load(cfg.manifest).split("train"), cfg, train=True)
    next(iter(loader))
    startup = time.perf_counter() - start
    order = timed(lambda: len(loader))  # one epoch's batch order, as every pass derives it
    state = len(json.dumps(loader.state_dict()).encode())
    loader.close()
    return [{"stage": "loader", "seconds": startup + order, "bytes": state,
             "note": f"start-up to the first batch {startup:.2f} s, epoch order {order:.3f} s, resume state {state} B"}]


def stage_train(a: argparse.Namespace) -> list[dict]:
    """Head + loss only, on random features: each (impl, width) at the baseline 1,000 classes, then --classes;
    each part's peak RSS its own (the process's resident memory when it starts, torch's included)."""
    import torch

    from fastprod.config import LossConfig
    from fastprod.losses import create_loss

    rows = []
    for impl in IMPLS:
        loss_fn = create_loss(LossConfig(impl=impl), inplace_backward=True)
        for width in WIDTHS:
            per_step = {}
            for classes in (BASE_CLASSES, a.classes):
                torch.manual_seed(0)
                head = torch.nn.Linear(width, classes)
                opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
                x = torch.randn(a.batch, width, requires_grad=True)
                y = torch.randint(classes, (a.batch,))

                def step() -> None:
                    opt.zero_grad(set_to_none=True)
                    if impl == "fused_linear":
                        out = loss_fn(x, head.weight, head.bias, y)
                    else:
                        out = loss_fn(head(x), y)
                    out.loss.backward()
                    opt.step()

                reset_peak_rss()
                step()  # warm: allocator, kernels, momentum buffers
                per_step[classes] = timed(lambda: [step() for _ in range(a.steps)]) / a.steps
                rows.append({"stage": f"train_{impl}_d{width}_c{classes}", "seconds": per_step[classes],
                             "bytes": 0, "peak_rss": peak_rss(),
                             "note": f"s/step, batch {a.batch}" + (f", x{per_step[classes] / per_step[BASE_CLASSES]:.1f} "
                                                                   f"the {BASE_CLASSES}-class head" if classes != BASE_CLASSES else "")})
                del head, opt, x
    return rows


def _train_labels(a: argparse.Namespace) -> tuple[list[str], np.ndarray]:
    from fastprod.data.manifest import Manifest

    train = Manifest.load(a.dir / "prepared").split("train")
    return list(train.image_ids), train.labels


def stage_o2u(a: argparse.Namespace) -> list[dict]:
    import torch

    from fastprod.config import O2UConfig
    from fastprod.recipe.o2u import O2UWeights

    image_ids, labels = _train_labels(a)
    n, out = len(labels), fresh(a.dir / "o2u")
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    o2u = O2UWeights(n, O2UConfig(), torch.device("cpu"))
    for _ in range(2):
        for idx in torch.randperm(n, generator=g).split(256):
            o2u.weights_for(idx)
            o2u.record(idx, torch.rand(len(idx), generator=g))
        o2u.end_epoch()
    csv = o2u.end_cycle(0, out, image_ids, labels)
    torch.save(o2u.state_dict(), out / "state.pt")
    s = time.perf_counter() - start
    state = (out / "state.pt").stat().st_size
    return [{"stage": "o2u", "seconds": s, "bytes": disk_bytes(out),
             "note": f"state {state / max(1, n):.0f} B/sample, CSV {csv.stat().st_size / max(1, n):.0f} B/sample"}]


def stage_checkpoint(a: argparse.Namespace) -> list[dict]:
    import torch

    from fastprod.config import ModelConfig
    from fastprod.models import create_model, load_weights

    cfg = ModelConfig(name="resnet50")
    model = create_model(cfg, a.classes)
    path = a.dir / "checkpoint" / "model.pt"
    path.parent.mkdir(exist_ok=True)
    save = timed(lambda: torch.save(model.state_dict(), path))
    load = timed(lambda: load_weights(create_model(cfg, a.classes), path))
    return [{"stage": "checkpoint", "seconds": save + load, "bytes": path.stat().st_size,
             "note": f"resnet50, save {save:.2f} s + load (with a fresh model) {load:.2f} s"}]


def stage_clean(a: argparse.Namespace) -> list[dict]:
    from fastprod.data.manifest import Manifest
    from fastprod.recipe.clean import balanced_subset, stratified_halves

    manifest = Manifest.load(a.dir / "prepared")
    labels = manifest.split("train").labels
    rng = np.random.default_rng(0)
    pred = np.where(rng.random(len(labels)) < 0.8, labels, rng.integers(a.classes, size=len(labels)))  # 80% agree
    conf = rng.random(len(labels))
    out = fresh(a.dir / "clean")
    start = time.perf_counter()
    fold = stratified_halves(labels, 0)
    keep = pred == labels
    chosen = balanced_subset(labels, conf, keep, 3)
    is_train = np.array(manifest.table["split"].to_pylist()) == "train"
    for name, mask in (("cleaned", keep), ("balanced", chosen)):
        rows = ~is_train
        rows[is_train] = mask
        manifest.subset(out / name, rows, name)
    s = time.perf_counter() - start
    return [{"stage": "clean", "seconds": s, "bytes": disk_bytes(out),
             "note": f"fold sizes {np.bincount(fold, minlength=2).tolist()}, kept {int(keep.sum())}, "
                     f"balanced {int(chosen.sum())}"}]


def stage_score_probs(a: argparse.Namespace) -> list[dict]:
    import torch

    from fastprod.config import load_config, save_config
    from fastprod.data.manifest import Manifest
    from fastprod.models import create_model
    from fastprod.score.engine import Engine, export_engine
    from fastprod.score.items import Items
    from fastprod.score.score import score
    from fastprod.score.tta import Views

    run, engine_dir, out = a.dir / "score-run", a.dir / "engine", fresh(a.dir / "score")
    if not (engine_dir / "engine.json").is_file():  # an input, reused: a random-weight model, exported
        cfg = load_config(None, [f"data.manifest={a.dir / 'prepared'}", "data.image_size=32", "model.name=resnet10t",
                                 f"run.dir={run}"])
        (run / "final").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "resolved.yaml")
        torch.save(create_model(cfg.model, a.classes).state_dict(), run / "final" / "model.pt")
        export_engine([run / "final" / "model.pt"], engine_dir, views=Views(32, (1.0,)), overwrite=True)
    engine = Engine(engine_dir, "cpu")
    train = Manifest.load(a.dir / "prepared").split("train")
    items = Items(list(train.image_ids[:a.n_val]), list(train.paths[:a.n_val]), train.labels[:a.n_val])
    reset_peak_rss()  # the engine's export is setup
    s = timed(lambda: score(engine, items, out, save_probs=True, workers=a.workers, progress=False))
    return [{"stage": "score_probs", "seconds": s, "bytes": disk_bytes(out),
             "note": f"{a.n_val} images x {a.classes} classes"}]


def _ensemble_inputs(a: argparse.Namespace) -> tuple[list[Path], Path]:
    d = a.dir / "ensemble-inputs"
    return [d / f"model{m}.npy" for m in range(ENSEMBLE_MODELS)], d / "labels.npy"


def stage_ensemble_inputs(a: argparse.Namespace) -> list[dict]:
    """The ensemble's inputs (this bench's setup, not a recipe stage): 4 models' float16 [N_val, C]
    probabilities, model m ranking the label first for 50 + 10m % of the rows, written in row blocks, and
    labels 3 per class over the first N_val / 3 classes (all C at 150k); the other classes have none, so
    `fit` gives them the global accuracies."""
    preds, labels = _ensemble_inputs(a)
    start = time.perf_counter()
    labels.parent.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(a.n_val) % min(a.classes, max(1, a.n_val // 3)))
    for m, path in enumerate(preds):
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(a.n_val, a.classes))
        for lo in range(0, a.n_val, 256):
            block = rng.random((min(256, a.n_val - lo), a.classes), dtype=np.float32)
            right = np.flatnonzero(rng.random(len(block)) < 0.5 + 0.1 * m)  # model m's top-1 accuracy
            block[right, y[lo:lo + len(block)][right]] += 2.0
            mm[lo:lo + len(block)] = block / block.sum(1, keepdims=True)
        mm.flush()
        del mm
    np.save(labels, y)
    s = time.perf_counter() - start
    return [{"stage": "ensemble_inputs", "seconds": s, "bytes": disk_bytes(labels.parent),
             "note": f"{ENSEMBLE_MODELS} x [{a.n_val}, {a.classes}] float16, {len(np.unique(y))} classes labelled"}]


def stage_ensemble_fit(a: argparse.Namespace) -> list[dict]:
    preds, labels = _ensemble_inputs(a)
    out = a.dir / "ensemble" / "W.npz"
    fresh(out.parent).mkdir(parents=True)
    s = timed(lambda: cli("ensemble", "fit", "--preds", *preds, "--labels", labels, "--out", out))
    return [{"stage": "ensemble_fit", "seconds": s, "bytes": out.stat().st_size,
             "note": f"{ENSEMBLE_MODELS} x [{a.n_val}, {a.classes}] float16"}]


def stage_ensemble_apply(a: argparse.Namespace) -> list[dict]:
    preds, labels = _ensemble_inputs(a)
    out = fresh(a.dir / "ensemble" / "apply")
    s = timed(lambda: cli("ensemble", "apply", "--weights", a.dir / "ensemble" / "W.npz", "--preds", *preds,
                          "--labels", labels, "--out", out, "--threads", a.workers))
    return [{"stage": "ensemble_apply", "seconds": s, "bytes": disk_bytes(out),
             "note": f"{ENSEMBLE_MODELS} x [{a.n_val}, {a.classes}] float16, top-5"}]


def run_stage(a: argparse.Namespace) -> int:
    """The child: run one stage, write its rows (with this process's peak RSS) to --result."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = globals()[f"stage_{a.stage}"](a)
    for row in rows:
        row.setdefault("peak_rss", peak_rss())
    a.result.write_text(json.dumps(rows) + "\n")
    return 0


# ---- the parent: one process per stage and size, then fits, projection, table, JSON and plot ----

def measure(a: argparse.Namespace, stage: str, n: int, work: Path) -> list[dict]:
    """Run `stage` at size n in a child process (or reuse its earlier result); rows with peak RSS and errors."""
    result = work / "results" / f"{stage}.json"
    if result.is_file() and not a.redo:
        return json.loads(result.read_text())
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    log = work / "results" / f"{stage}.log"
    cmd = [sys.executable, __file__, "--stage", stage, "--dir", str(work), "--n", str(n), "--classes",
           str(a.classes), "--steps", str(a.steps), "--batch", str(a.batch), "--workers", str(a.workers),
           "--result", str(result)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as f:
        child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    tree_rss = usage.ru_maxrss * 1024  # the largest process of the stage's tree (Linux: KiB), this one's ~30 MB too
    if child.returncode != 0 or not result.is_file():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        error = lines[-1] if lines else f"exit code {child.returncode}"
        return [{"stage": stage, "seconds": None, "bytes": None, "peak_rss": tree_rss, "note": "", "error": error}]
    rows = json.loads(result.read_text())
    if len(rows) == 1:
        rows[0]["peak_rss"] = max(rows[0]["peak_rss"], tree_rss)
    for row in rows:
        row["error"] = None
    result.write_text(json.dumps(rows) + "\n")
    return rows


def fit_exponent(sizes: list[int], values: list[float | None], size_free: bool = False
                 ) -> tuple[float | None, float | None]:
    """Least squares log(value) = e * log(N) + b over the sizes that have a positive value: (e, value at 3M).
    `size_free` (a stage whose work does not depend on N): the projection is the median, not the fit's."""
    pts = [(n, v) for n, v in zip(sizes, values) if v is not None and v > 0]
    if len(pts) < 2 or len({n for n, _ in pts}) < 2:
        return None, (float(np.median([v for _, v in pts])) if size_free and pts else None)
    e, b = np.polyfit(np.log([n for n, _ in pts]), np.log([v for _, v in pts]), 1)
    return float(e), float(np.median([v for _, v in pts]) if size_free else math.exp(b) * FULL_TRAIN ** e)


def summarise(measured: dict[int, list[dict]]) -> list[dict]:
    """One row per stage: its figures at every size, the fitted exponents and the projection to 3M."""
    sizes = sorted(measured)
    names = list(dict.fromkeys(r["stage"] for n in sizes for r in measured[n]))
    rows = []
    for name in names:
        at = {n: next((r for r in measured[n] if r["stage"] == name), None) for n in sizes}
        col = {key: [at[n][key] if at[n] and not at[n]["error"] else None for n in sizes]
               for key in ("seconds", "peak_rss", "bytes")}
        (e_t, p_t), (e_m, p_m), (e_b, p_b) = (fit_exponent(sizes, col[k], name.startswith(SIZE_FREE))
                                              for k in ("seconds", "peak_rss", "bytes"))
        errors = [f"N={n}: {at[n]['error']}" for n in sizes if at[n] and at[n]["error"]]
        rss_mb = [v / 2**20 if v else None for v in col["peak_rss"]]
        rows.append({"stage": name, **{f"seconds_N{n}": v for n, v in zip(sizes, col["seconds"])},
                     **{f"peak_rss_mb_N{n}": v for n, v in zip(sizes, rss_mb)},
                     **{f"bytes_N{n}": v for n, v in zip(sizes, col["bytes"])},
                     "time_exponent": e_t, "rss_exponent": e_m, "bytes_exponent": e_b,
                     "projected_seconds": p_t, "projected_rss_mb": p_m / 2**20 if p_m else None,
                     "projected_bytes": p_b, "note": next((at[n]["note"] for n in reversed(sizes)
                                                          if at[n] and not at[n]["error"]), ""),
                     "errors": "; ".join(errors)})
    return rows


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], sizes: list[int]) -> None:
    head = "".join(f"{'s @' + format(n, ','):>13}" for n in sizes) + "".join(f"{'MB @' + format(n, ','):>13}"
                                                                            for n in sizes)
    print(f"{'stage':<28}{head}{'exp t':>7}{'exp mem':>8}{'s @3M':>10}{'MB @3M':>9}{'GB out @3M':>11}")
    for r in rows:
        cells = "".join(f"{_f(r[f'seconds_N{n}'], '.3g'):>13}" for n in sizes) + "".join(
            f"{_f(r[f'peak_rss_mb_N{n}'], '.0f'):>13}" for n in sizes)
        print(f"{r['stage']:<28}{cells}{_f(r['time_exponent'], '.2f'):>7}{_f(r['rss_exponent'], '.2f'):>8}"
              f"{_f(r['projected_seconds'], '.3g'):>10}{_f(r['projected_rss_mb'], '.0f'):>9}"
              f"{_f(r['projected_bytes'] and r['projected_bytes'] / 1e9, '.3g'):>11}"
              + (f"  FAILED {r['errors']}" if r["errors"] else ""))


def plot(rows: list[dict], sizes: list[int], file: Path, title: str) -> None:
    """Time and peak memory against N on log-log axes, one line per stage."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, r in enumerate(rows):
        for ax, key in zip(axes, ("seconds", "peak_rss_mb")):
            pts = [(n, r[f"{key}_N{n}"]) for n in sizes if r[f"{key}_N{n}"]]
            if pts:  # 10 colours x 3 line styles: 30 stages told apart
                ax.plot(*zip(*pts), marker="o", linestyle=("-", "--", ":")[i % 3], label=r["stage"])
    axes[0].set(xscale="log", yscale="log", xlabel="training images N", ylabel="seconds", title="wall time")
    axes[1].set(xscale="log", yscale="log", xlabel="training images N", ylabel="peak RSS (MiB)", title="peak memory")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.savefig(file, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[60_000, 120_000, 250_000], help="training images N")
    ap.add_argument("--classes", type=int, default=50030)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-results" / "scale", help="inputs, reused per size")
    ap.add_argument("--only", nargs="+", choices=STAGES, default=None, help="run only these stages")
    ap.add_argument("--redo", action="store_true", help="measure again stages whose result --work already has")
    ap.add_argument("--steps", type=int, default=3, help="training steps per head and loss.impl")
    ap.add_argument("--batch", type=int, default=64, help="training batch per step")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for synth/prepare/ffcv/score")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="log-log PNG (default: next to --json, else --work)")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        a.n_val = max(1, a.n // VAL_RATIO)
        try:
            return run_stage(a)
        except Exception:
            traceback.print_exc()
            print(f"{a.stage}: {traceback.format_exc(limit=0).strip().splitlines()[-1]}")
            return 1
    if a.classes < 2 or min(a.sizes) < max(a.classes, 2 * VAL_RATIO):
        ap.error(f"--sizes must be at least --classes ({a.classes}: the long tail gives every class an image) and 40")
    measured = {}
    for n in sorted(set(a.sizes)):
        work = a.work / f"n{n}-c{a.classes}"
        measured[n] = []
        for stage in a.only or STAGES:
            rows = measure(a, stage, n, work)
            for r in rows:
                state = f"FAILED: {r['error']}" if r["error"] else f"{r['seconds']:.3g} s, {r['peak_rss'] / 2**20:.0f} MiB"
                print(f"N={n:,} {r['stage']}: {state}", flush=True)
            measured[n] += rows
    from results import hardware, write_json  # torch: imported only now, so the stages' processes do not inherit it

    rows, sizes = summarise(measured), sorted(measured)
    print(hardware())
    print_table(rows, sizes)
    title = f"Cost against N training images at {a.classes:,} classes"
    png = a.plot or (a.json.with_suffix(".png") if a.json else a.work / "scale.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, sizes, png, title)
    print(f"plot: {png}")
    write_json(a.json, "scale", title, f"exponent of each stage's cost in N (least squares on log-log over "
               f"{sorted(set(a.sizes))}); projection to N = {FULL_TRAIN:,}, N_val = {FULL_TRAIN // VAL_RATIO:,}",
               rows)  # the plot is this bench's own (--plot): report.py shows it
    return 0


if __name__ == "__main__":
    sys.exit(main())
