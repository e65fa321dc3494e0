"""Where a training step's time goes: fastprod's own Trainer (DeepSpeed engine, configured loader and
loss) on a synthetic dataset, per model: throughput, FLOP utilisation against the trainer's peak (a GPU's
data-sheet rate, else the measured matmul rate in the run's precision), peak memory, and the PyTorch profiler's
breakdown into data wait, forward, loss, the non-finite check (the step's one wait on the host), backward and
optimizer step, saved as a Chrome trace (open in chrome://tracing or Perfetto).

    python bench/profile_step.py --out DIR [--models resnet34 resnest50d] [--size 64] [--batch 16]
                                 [--steps 4] [--classes 100] [--set key=value ...]

Writes DIR/profile-<model>.json and DIR/trace-<model>.json. The dataset (fastprod synth + prepare)
is made once under DIR/data. Precision `auto` unless --precision; on a GPU the defaults grow to 224 px, batch 128.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from fastprod.train.perf import peak_memory_gib
from results import write_json

PHASES = ("data_wait", "forward", "loss", "finite_check", "backward", "optimizer_step")


def dataset(out: Path, classes: int, images: int) -> Path:
    from fastprod.data.prepare import prepare
    from fastprod.data.synth import synthesize

    raw, prepared = out / "data" / "raw", out / "data" / "prepared"
    if not (raw / "train.json").exists():
        synthesize(raw, classes=classes, train_images=images, val_per_class=1, noise=0.2, size=(256, 256))
    if not (prepared / "manifest.parquet").exists():
        prepare(raw, prepared)
    return prepared


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(trainer, batches, steps: int, annotate: bool) -> float:
    """Train `steps` steps from the iterator; returns wall seconds. Data waits are annotated for the profiler."""
    device = trainer.dist.device
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with record_function("fastprod.data_wait") if annotate else nullcontext():
            batch = next(batches)
        trainer.train_step(batch, 0.01)
    sync(device)
    return time.perf_counter() - start


def endless(loader):
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def profile_model(name: str, args: argparse.Namespace, manifest: Path, out: Path) -> dict:
    from fastprod.config import load_config
    from fastprod.train.distributed import init_distributed
    from fastprod.train.engine import Trainer

    cuda = torch.cuda.is_available()
    precision = args.precision or "auto"
    cfg = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml", [
        f"data.manifest={manifest}", f"model.name={name}", f"data.image_size={args.size}",
        f"data.batch_size={args.batch}", f"run.precision={precision}", f"run.dir={out / f'run-{name}'}",
        "run.progress=false", *args.overrides])
    dist = init_distributed()
    trainer = Trainer(cfg, dist)
    batches = endless(trainer.train_loader)
    run_steps(trainer, batches, 2, annotate=False)  # warm-up: allocator, cudnn autotune, workers
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = run_steps(trainer, batches, args.steps, annotate=False)
    img_s = args.steps * args.batch * dist.world / seconds

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run_steps(trainer, batches, args.steps, annotate=True)
    trace = out / f"trace-{name}.json"
    prof.export_chrome_trace(str(trace))
    totals = {e.key: e for e in prof.key_averages() if e.key.startswith("fastprod.")}
    phases_ms = {}
    for phase in PHASES:
        event = totals.get(f"fastprod.{phase}")
        device_us = getattr(event, "device_time_total", 0) if event and cuda and phase != "data_wait" else 0
        host_us = event.cpu_time_total if event else 0.0
        phases_ms[phase] = (device_us or host_us) / 1000 / args.steps

    flops = trainer.flops_per_image * args.batch  # per step (the trainer's count: 3 forwards)
    rate = trainer.peak_flops  # the GPU's data-sheet peak, or the measured matmul rate in the run's precision
    result = {
        "model": name, "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "image_size": args.size, "batch": args.batch, "precision": trainer.precision, "classes": trainer.manifest.num_classes,
        "loss_impl": cfg.loss.impl, "img_per_s": img_s, "step_ms": 1000 * seconds / args.steps,
        "gflop_per_step": flops / 1e9, "achieved_tflops": flops * args.steps / seconds / 1e12,
        "matmul_tflops": rate / 1e12, "mfu": flops * args.steps / seconds / rate,
        "peak_memory_mib": peak_memory_gib(dist.device) * 1024, "phases_ms": phases_ms, "trace": str(trace),
    }
    (out / f"profile-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", nargs="+", default=["resnet34", "resnest50d"])
    parser.add_argument("--size", type=int, default=224 if cuda else 64)
    parser.add_argument("--batch", type=int, default=128 if cuda else 16)
    parser.add_argument("--steps", type=int, default=10 if cuda else 4)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--images", type=int, default=None, help="training images to synthesise")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None, help="also write the result file (bench/results.py) here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = dataset(out, args.classes, args.images or max(4 * args.batch * (args.steps * 2 + 3), 500))
    rows = []
    for name in args.models:
        r = profile_model(name, args, manifest, out)
        rows.append({"model": name, "img_per_s": r["img_per_s"], "step_ms": r["step_ms"], "mfu": r["mfu"],
                     "achieved_tflops": r["achieved_tflops"], "peak_memory_mib": r["peak_memory_mib"],
                     **{f"{k}_ms": v for k, v in r["phases_ms"].items()}, "trace": r["trace"]})
        phases = "  ".join(f"{k} {v:.1f}" for k, v in r["phases_ms"].items())
        print(f"{name} @ {r['image_size']}px batch {r['batch']} {r['precision']} on {r['device']}: "
              f"{r['img_per_s']:.1f} img/s, {r['achieved_tflops']:.3f} TFLOP/s = {100 * r['mfu']:.1f}% of the "
              f"peak rate ({r['matmul_tflops']:.2f} TFLOP/s); peak memory {r['peak_memory_mib']:.0f} MiB")
        print(f"  per step (ms): {phases}; trace {r['trace']}")
    write_json(args.json, "profile_step", f"training step of the Trainer, {args.size} px, batch {args.batch}",
               "the measured matrix-multiply rate of this machine (mfu)", rows,
               {"label": "model", "stack": [f"{k}_ms" for k in PHASES], "ylabel": "ms per step (profiler)"})


if __name__ == "__main__":
    main()
