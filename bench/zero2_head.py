"""ZeRO-2 against ZeRO-0 for the fused_linear head at AliProducts' 50,030 classes: 2 ranks (torchrun, gloo on
the CPU) train resnet18 with `loss.impl: fused_linear` for a few steps, once per `run.zero_stage`.

    .venv/bin/python bench/zero2_head.py [--work DIR] [--classes 50030] [--train-images 60000] [--steps 6]
                                         [--batch 16] [--size 32] [--val-images 256] [--model resnet18]
                                         [--stages 0 2] [--repeats 1] [--threads 1] [--json FILE]

The head is most of the model at this class count: resnet18's 512 features x 50,030 classes are 25.6M of its
36.8M parameters. ZeRO-2 partitions the gradients and the optimizer state (SGD momentum) across the ranks,
and keeps an fp32 copy of each rank's partition of the weights; ZeRO-0 holds whole gradients and momentum on
every rank. Baseline: ZeRO-0 (the first of --stages), every ratio against it.

Inputs, made once and reused under --work: `fastprod synth` (--classes, --train-images at --size px, one
validation image per class) and `fastprod prepare` of it (~3-5 minutes on 2 cores); each measurement then
trains on a manifest of all of its training images and the first --val-images validation images (the class
mapping stays the 50,030 classes: validating over all 50,030 images would take minutes per run and is not what
is measured). Each run is `torchrun --nproc_per_node 2 launch/train.py` (one epoch cut at --steps steps, batch
--batch per rank, fp32, no O2U, no data workers, OMP_NUM_THREADS = --threads per rank) in its own run
directory; the stages alternate over --repeats (the order reversed every repeat) and the median is reported.

Figures per stage: seconds per step (the median of steps 2..N from the run's metrics.jsonl, global batch over
its img/s: forward, loss, backward and optimizer step with the data wait, not the checkpoint), each rank's peak
RSS (`peak_mem_gib_per_rank` of its summary.json: the whole life of the process, start-up with torch's ~0.65 GB,
the validation and the final checkpoint included) and the largest process of the launcher's tree (rusage of
`wait4`). Not part of bench/scale.py's ladder (the work does not depend on the number of training images, and
each run takes a minute or more on 2 cores) nor of bench/run.sh; run it on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CONFIG = """
data: {{manifest: {manifest}, image_size: {size}, batch_size: {batch}, eval_batch_size: 64, workers: 0}}
model: {{name: {model}, channels_last: true}}
optim: {{lr: 0.05, momentum: 0.9, weight_decay: 3.0e-4}}
loss: {{name: ce, impl: fused_linear}}
schedule: {{epochs: 1, max_steps: {steps}}}
run: {{dir: {run_dir}, precision: fp32, zero_stage: {zero}, ckpt_every_steps: 1000000, log_every_steps: 1,
      progress: false}}
"""
RANKS = 2


def fastprod(*argv: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "fastprod.cli", *map(str, argv)], check=True, cwd=ROOT)


def prepare_inputs(a: argparse.Namespace) -> Path:
    """The synthetic dataset (made once under --work) and the manifest the runs train on: its training images and
    the first --val-images validation images, all classes kept."""
    from fastprod.data.manifest import Manifest

    data, prepared = a.work / "data", a.work / "prepared"
    if not (prepared / "manifest.parquet").is_file():
        if not (data / "train.json").is_file():
            fastprod("synth", data, "--classes", a.classes, "--train-images", a.train_images, "--val-per-class", 1,
                     "--size", f"{a.size}x{a.size}")
        fastprod("prepare", data, "--out", prepared)
    manifest = Manifest.load(prepared)
    if manifest.num_classes != a.classes:
        raise SystemExit(f"{prepared} has {manifest.num_classes} classes, not --classes {a.classes}: "
                         f"use another --work")
    split = np.asarray(manifest.table["split"].to_pylist())
    is_val = split == "val"
    keep = (split == "train") | (is_val & (np.cumsum(is_val) <= a.val_images))
    return manifest.subset(a.work / f"bench-manifest-val{a.val_images}", keep, f"{a.val_images} val images").directory


def run(a: argparse.Namespace, manifest: Path, zero: int, repeat: int) -> dict:
    """One 2-rank training run at `run.zero_stage` = zero; its figures."""
    run_dir = a.work / "runs" / f"zero{zero}-{repeat}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = run_dir.parent / f"zero{zero}-{repeat}.yaml"
    config.write_text(CONFIG.format(manifest=manifest, size=a.size, batch=a.batch, model=a.model, steps=a.steps,
                                    run_dir=run_dir, zero=zero))
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(RANKS), "--master_port",
           str(29700 + os.getpid() % 500), str(ROOT / "launch" / "train.py"), "--config", str(config)]
    with open(run_dir.parent / f"zero{zero}-{repeat}.log", "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the ZeRO-{zero} run failed: see {log.name}")
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [ln for ln in lines if ln["kind"] == "train" and ln["step"] >= 2]
    return {"s_per_step": statistics.median(a.batch * RANKS / ln["img_per_s"] for ln in steps),
            "data_wait": statistics.median(ln["data_wait"] for ln in steps),
            "peak_rss_gib_per_rank": summary["peak_mem_gib_per_rank"],
            "tree_peak_rss_gib": usage.ru_maxrss / 2**20}  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench-results" / "zero2_head", help="inputs, reused")
    ap.add_argument("--classes", type=int, default=50030)
    ap.add_argument("--train-images", type=int, default=60000)
    ap.add_argument("--steps", type=int, default=6, help="training steps per run (step 1 is not timed)")
    ap.add_argument("--batch", type=int, default=16, help="batch per rank")
    ap.add_argument("--size", type=int, default=32, help="image side, px")
    ap.add_argument("--val-images", type=int, default=256, help="validation images of each run")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--stages", type=int, nargs="+", choices=(0, 1, 2), default=[0, 2],
                    help="run.zero_stage values; the first is the baseline")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each rank")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.steps < 2 or a.repeats < 1 or a.val_images < 1 or a.train_images < a.classes:
        ap.error("--steps must be >= 2, --repeats and --val-images >= 1, --train-images >= --classes")
    manifest = prepare_inputs(a)
    measured: dict[int, list[dict]] = {zero: [] for zero in a.stages}
    for repeat in range(a.repeats):
        for zero in (a.stages if repeat % 2 == 0 else a.stages[::-1]):
            measured[zero].append(figures := run(a, manifest, zero, repeat))
            print(f"ZeRO-{zero} run {repeat + 1}: {figures}", flush=True)
    from results import hardware, write_json  # torch: only now, the runs do not need it in this process

    rows = []
    for zero, runs in measured.items():
        per_rank = [statistics.median(r["peak_rss_gib_per_rank"][k] for r in runs) for k in range(RANKS)]
        rows.append({"stage": f"ZeRO-{zero}", "s_per_step": statistics.median(r["s_per_step"] for r in runs),
                     "data_wait": statistics.median(r["data_wait"] for r in runs),
                     **{f"peak_rss_gib_rank{k}": v for k, v in enumerate(per_rank)},
                     "tree_peak_rss_gib": statistics.median(r["tree_peak_rss_gib"] for r in runs)})
    base = rows[0]
    for row in rows:
        row["time_ratio"] = row["s_per_step"] / base["s_per_step"]
        row["rss_ratio"] = max(row[f"peak_rss_gib_rank{k}"] for k in range(RANKS)) / max(
            base[f"peak_rss_gib_rank{k}"] for k in range(RANKS))
    title = (f"{a.model} + fused_linear head, {a.classes:,} classes, {RANKS} ranks x batch {a.batch}, {a.size} px: "
             f"ZeRO stages")
    print(hardware())
    print(title)
    print(f"{'stage':<8}{'s/step':>8}{'x base':>8}{'data wait':>10}"
          + "".join(f"{'GiB rank' + str(k):>11}" for k in range(RANKS)) + f"{'GiB tree':>10}{'x base':>8}")
    for r in rows:
        print(f"{r['stage']:<8}{r['s_per_step']:>8.3f}{r['time_ratio']:>8.2f}{r['data_wait']:>10.2f}"
              + "".join(f"{r[f'peak_rss_gib_rank{k}']:>11.3f}" for k in range(RANKS))
              + f"{r['tree_peak_rss_gib']:>10.3f}{r['rss_ratio']:>8.2f}")
    write_json(a.json, "zero2_head", title, f"ZeRO-{a.stages[0]}: ratios of s/step and of the largest rank's peak RSS",
               rows, plot={"label": "stage", "value": "s_per_step", "ylabel": "seconds per step"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
