"""End-to-end training throughput: `fastprod train` against the loop a user would otherwise write, in one run.

    .venv/bin/python bench/train_throughput.py [--models resnet18] [--sizes 64] [--images 2000] [--classes 20]
                                               [--batch 32] [--workers 2] [--threads 2] [--pairs 3]
                                               [--backends pil] [--precisions fp32] [--compile]
                                               [--augment all|crop-flip]

The baseline is the plain PyTorch recipe: torchvision `ImageFolder` over the same synthetic training images,
the same augmentations as torchvision v2 ops, a `DataLoader` with the same number of workers, a timm model
(channels_last), SGD with momentum and weight decay, cross entropy and the usual
`for images, labels in loader:` loop. fastprod runs as a user runs it (`python launch/train.py --config ...`:
DeepSpeed, its loader backend, metrics, the skip-non-finite check) with the same model, batch, image size,
workers and threads, for one epoch without checkpoints or O2U, in each of --precisions (bf16: torch.autocast,
fp32 master weights). The baseline loop trains in fp32, as the usual loop does; with bf16 in --precisions the
same loop under `torch.autocast(bfloat16)` runs too ("plain loop bf16"), so the table shows what mixed
precision alone gives. --compile adds fastprod runs of the first backend with `model.compile: true`
(torch.compile, inductor; its compile time falls in the first step, outside the measured window). Each run is
its own process with OMP_NUM_THREADS = --threads; the sides alternate (--pairs times, the order reversed every
pair) and the median of each is reported. Throughput is training images over the time from the end of the
first step to the end of the last (start-up, the first step and validation excluded), from fastprod's own
metrics.jsonl (logged at its default `run.log_every_steps`; the first line is step 1) and the same clock in the
plain loop; "data wait" is the share of that time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CONFIG = """
data: {{manifest: {manifest}, backend: {backend}, image_size: {size}, batch_size: {batch}, workers: {workers},
        augment: {augment}}}
model: {{name: {model}, drop_rate: 0.5, channels_last: true, compile: {compile}}}
optim: {{lr: 0.1, momentum: 0.9, weight_decay: 3.0e-4}}
loss: {{name: ce}}
schedule: {{epochs: 1, cycle_epochs: 1}}
run: {{dir: {run_dir}, precision: {precision}, ckpt_every_steps: 1000000, progress: false}}
"""
# crop-flip: the comparison the issue started from (random-resized crop + flip only)
AUGMENT = {"all": "{}", "crop-flip": "{rotation_p: 0, perspective_p: 0, cutout_p: 0}"}


def plain_loop(raw: Path, model_name: str, size: int, batch: int, workers: int, augment: str,
               precision: str) -> dict:
    """The user's loop; returns img/s and data-wait share over steps 2..N of one epoch."""
    import timm
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    from fastprod.data.augment import MEAN, STD

    ops = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if augment == "all":
        ops += [v2.RandomApply([v2.RandomRotation(15)], p=0.5), v2.RandomPerspective(0.3, p=0.3)]
    ops += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if augment == "all":
        ops.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.2)))
    dataset = torchvision.datasets.ImageFolder(str(raw / "train"), transform=v2.Compose(ops))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    model = timm.create_model(model_name, num_classes=len(dataset.classes), drop_rate=0.5)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    steps, waited, start = 0, 0.0, None
    t = time.perf_counter()
    for images, labels in loader:
        ready = time.perf_counter()
        if start is not None:
            waited += ready - t
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images.to(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t = time.perf_counter()
        if start is None:
            start = t  # the clock starts when the first step ends
        else:
            steps += 1
    elapsed = t - start
    return {"img_per_s": steps * batch / elapsed, "data_wait": waited / elapsed, "steps": steps}


def fastprod_run(manifest: Path, work: Path, model: str, size: int, batch: int, workers: int, backend: str,
                 augment: str, precision: str, compile: bool, env: dict) -> dict:
    """`python launch/train.py` on the prepared copy of the same images; img/s from metrics.jsonl timestamps."""
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    config = run_dir.with_suffix(".yaml")
    config.write_text(CONFIG.format(manifest=manifest, backend=backend, size=size, batch=batch, workers=workers,
                                    augment=AUGMENT[augment], model=model, run_dir=run_dir, precision=precision,
                                    compile=str(compile).lower()))
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(config)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fastprod train failed:\n{done.stderr[-3000:]}")
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [ln for ln in lines if ln["kind"] == "train"]  # step 1, then every log step
    elapsed = train[-1]["time"] - train[0]["time"]
    steps = train[-1]["step"] - train[0]["step"]
    waited = sum(ln["data_wait"] * (ln["step"] - prev["step"]) * batch / ln["img_per_s"]
                 for prev, ln in zip(train, train[1:]))
    return {"img_per_s": steps * batch / elapsed, "data_wait": waited / elapsed, "steps": steps}


def label(side: tuple[str, str, bool]) -> str:
    backend, precision, compile = side
    name = "plain loop" if backend == "plain" else f"fastprod {backend}"
    return f"{name} {precision}" + (" compiled" if compile else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["pil"], choices=["pil", "dali", "ffcv"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="also fastprod with model.compile: true")
    parser.add_argument("--augment", choices=list(AUGMENT), default="all")
    parser.add_argument("--work", type=Path, default=None, help="where the synthetic data and runs go (default: tmp)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plain", nargs=6, metavar=("RAW", "MODEL", "SIZE", "BATCH", "WORKERS", "PRECISION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:  # the child process of one baseline run
        raw, model, size, batch, workers, precision = args.plain
        print(json.dumps(plain_loop(Path(raw), model, int(size), int(batch), int(workers), args.augment, precision)))
        return

    from fastprod.data.prepare import prepare
    from fastprod.data.synth import synthesize
    from results import write_json

    work = args.work or Path(tempfile.mkdtemp(prefix="train-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    raw, manifest = work / "raw", work / "prepared"
    if not (manifest / "manifest.parquet").exists():
        synthesize(raw, classes=args.classes, train_images=args.images, val_per_class=2, noise=0.0, seed=0,
                   size=(max(args.sizes) + 32,) * 2, corrupt=0, workers=args.threads)
        prepare(raw, manifest, workers=args.threads)
        if "ffcv" in args.backends:
            from fastprod.data.ffcv_writer import write_beton
            from fastprod.data.manifest import Manifest

            for split in ("train", "val"):
                write_beton(Manifest.load(manifest).split(split), manifest / "ffcv" / f"{split}.beton",
                            workers=args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)

    def run(side: tuple[str, str, bool], model: str, size: int) -> dict:
        backend, precision, compile = side
        if backend != "plain":
            return fastprod_run(manifest, work, model, size, args.batch, args.workers, backend, args.augment,
                                precision, compile, env)
        done = subprocess.run([sys.executable, __file__, "--augment", args.augment, "--plain", str(raw), model,
                               str(size), str(args.batch), str(args.workers), precision], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"plain loop failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    sides = [("plain", p, False) for p in ["fp32", *(["bf16"] if "bf16" in args.precisions else [])]]
    sides += [(backend, p, False) for p in args.precisions for backend in args.backends]
    sides += [(args.backends[0], p, True) for p in args.precisions if args.compile]
    rows = []
    for model in args.models:
        for size in args.sizes:
            runs: dict[tuple[str, str, bool], list[dict]] = {side: [] for side in sides}
            for pair in range(args.pairs):
                for side in sides if pair % 2 == 0 else sides[::-1]:
                    result = run(side, model, size)
                    runs[side].append(result)
                    print(f"{model} {size}px pair {pair + 1}: {label(side):26s} {result['img_per_s']:7.1f} img/s, "
                          f"data wait {100 * result['data_wait']:.0f}%", flush=True)
            base = statistics.median(r["img_per_s"] for r in runs[("plain", "fp32", False)])
            for side, results in runs.items():
                rate = statistics.median(r["img_per_s"] for r in results)
                rows.append({"model": model, "size": size, "pipeline": label(side),
                             "img_per_s": round(rate, 1), "x_plain": round(rate / base, 3),
                             "data_wait": round(statistics.median(r["data_wait"] for r in results), 3),
                             "runs": len(results)})
                print(f"{model} {size}px {rows[-1]['pipeline']:26s} median {rate:7.1f} img/s = "
                      f"{rate / base:.2f}x the plain loop, data wait {100 * rows[-1]['data_wait']:.0f}%", flush=True)
    write_json(args.json, "train_throughput",
               f"training throughput, batch {args.batch}, {args.workers} workers, {args.threads} threads, "
               f"augment {args.augment}", "plain PyTorch loop in fp32 (ImageFolder, DataLoader, timm, SGD)", rows,
               plot={"label": "pipeline", "value": "img_per_s", "ylabel": "img/s"})


if __name__ == "__main__":
    main()
