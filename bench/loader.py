"""Training-pipeline throughput of each data backend vs a plain torchvision/PIL DataLoader, in one run.

    .venv/bin/python bench/loader.py [--images 320] [--threads 2] [--batch 64] [--repeats 3]

Synthetic "realistic" JPEGs (400x300 to 800x600, quality 90, smooth colour fields with edges and
sensor-like noise, ~60-120 KB) are written and prepared once under --work. Every pipeline runs the full
training augmentation (random-resized crop 224, flip 0.5, rotation 15 deg p 0.5, perspective 0.3 p 0.3,
cutout p 0.5: the config defaults) and is timed to a normalised float batch on the training device
(here the CPU), with the same number of threads/workers. The baseline is what a plain PyTorch recipe
does: ImageFolder-style Dataset, PIL decode, the torchvision v2 ops, DataLoader workers (persistent), default
collate, then timm's normalisation on the device (`x.float().sub_(mean).div_(std)`, constants made once per epoch) and
channels_last. FFCV reads a .beton written with --max-resolution (the longest side stored; FFCV's usual
trade of a smaller stored image for decode speed), so it is shown at two resolutions. Each pipeline is
warmed up with one epoch (FFCV compiles, DALI builds), then timed over --repeats epochs, interleaved
across pipelines; the median img/s is reported with its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastprod.config import DataConfig  # noqa: E402
from fastprod.data.augment import MEAN, STD  # noqa: E402
from fastprod.data.augmentations import train_ops  # noqa: E402
from fastprod.data.loaders import create_loader  # noqa: E402
from fastprod.data.manifest import Manifest  # noqa: E402
from results import write_json  # noqa: E402


def realistic_jpegs(root: Path, n: int, seed: int = 0) -> None:
    """n JPEGs in AliProducts layout (train.json + train/<class>/<id>.jpg), 10 classes."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        w = int(rng.integers(400, 801))
        h = int(rng.integers(300, min(600, w) + 1))
        field = rng.random((6, 8, 3)) * 255  # low-frequency colour field
        img = np.asarray(Image.fromarray(field.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)  # a product-like block with sharp edges
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.random(3) * 255
        img += rng.normal(0, 6, img.shape)  # sensor noise: keeps JPEG sizes realistic
        cls = f"{i % 10:05d}"
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "train" / cls / f"{i:06d}.jpg", quality=90)
        entries.append({"image_id": f"{i:06d}.jpg", "class_id": cls})
    (root / "train.json").write_text(json.dumps({"images": entries}))
    (root / "val.json").write_text(json.dumps({"images": []}))


class PlainFolder(Dataset):
    """The baseline: what a plain torchvision recipe does per sample."""

    def __init__(self, paths: list[str], labels: np.ndarray, transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i])


def baseline_epoch(loader: DataLoader, device: torch.device) -> int:
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    n = 0
    for images, labels in loader:
        x = images.to(device, non_blocking=True).float().sub_(mean).div_(std)
        x = x.contiguous(memory_format=torch.channels_last)
        labels.to(device, non_blocking=True)
        n += x.shape[0]
    return n


def backend_epoch(loader, device: torch.device, epoch: int) -> int:
    loader.set_epoch(epoch)
    n = 0
    for batch in loader:
        n += batch.images.shape[0]
    return n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/fastprod_bench_loader"))
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--threads", type=int, default=2, help="DataLoader workers / DALI threads / FFCV threads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-resolution", type=int, nargs="+", default=[512, 320], help="FFCV stored longest side(s)")
    p.add_argument("--only", nargs="+", default=None, help="subset of: baseline pil dali ffcv")
    p.add_argument("--json", default=None, help="also write the result file (bench/results.py) here")
    args = p.parse_args()

    raw, prepared = args.work / "raw", args.work / "prepared"
    if not (prepared / "manifest.parquet").is_file():
        from fastprod.data.prepare import prepare

        realistic_jpegs(raw, args.images)
        prepare(raw, prepared, workers=args.threads)
    manifest = Manifest.load(prepared)
    split = manifest.split("train")
    sizes = [os.path.getsize(q) for q in split.paths]
    print(f"{len(split)} JPEGs, mean {np.mean(sizes) / 1024:.0f} KiB; batch {args.batch}, threads {args.threads}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = DataConfig(manifest=str(prepared), batch_size=args.batch, workers=args.threads)
    want = set(args.only or ["baseline", "pil", "dali", "ffcv"])

    runs: dict[str, callable] = {}
    if "baseline" in want:
        base = DataLoader(PlainFolder(split.paths, split.labels, v2.Compose(train_ops(cfg.image_size, cfg.augment))),
                          batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.threads,
                          persistent_workers=True, prefetch_factor=4, pin_memory=device.type == "cuda")
        runs["torchvision/PIL DataLoader (baseline)"] = lambda e: baseline_epoch(base, device)
    for name in ("pil", "dali"):
        if name in want:
            ld = create_loader(split, DataConfig(**{**cfg.__dict__, "backend": name}), train=True, device=device)
            runs[f"fastprod {name}" + (" (CPU)" if name == "dali" and device.type == "cpu" else "")] = \
                (lambda ld: lambda e: backend_epoch(ld, device, e))(ld)
    if "ffcv" in want:
        from fastprod.data.ffcv_writer import write_beton

        for res in args.max_resolution:
            out = prepared / f"ffcv{res}"
            if not (out / "train.beton").is_file():
                t = time.time()
                write_beton(split, out / "train.beton", max_resolution=res, jpeg_quality=90, workers=args.threads)
                print(f"wrote ffcv{res}/train.beton in {time.time() - t:.1f} s")
            ld = create_loader(split, DataConfig(**{**cfg.__dict__, "backend": "ffcv", "ffcv_dir": str(out)}),
                               train=True, device=device)
            runs[f"fastprod ffcv (stored <= {res} px)"] = (lambda ld: lambda e: backend_epoch(ld, device, e))(ld)

    rates: dict[str, list[float]] = {k: [] for k in runs}
    for name, run in runs.items():  # warm-up epoch: compile / build / fork workers
        t = time.time()
        run(0)
        print(f"warm-up {name}: {time.time() - t:.1f} s")
    for rep in range(args.repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            n = run(rep + 1)
            rates[name].append(n / (time.perf_counter() - t))
    baseline = statistics.median(next(iter(rates.values())))
    print(f"\n| pipeline (all augmentations on) | img/s (median of {args.repeats}) | x baseline |\n|---|---|---|")
    rows = []
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.0f} | {statistics.median(r) / baseline:.2f} |")
        rows.append({"pipeline": name, "img_per_s": statistics.median(r), "x_baseline": statistics.median(r) / baseline})
    write_json(args.json, "loader", f"training pipelines with all augmentations, {len(split)} JPEGs, batch "
               f"{args.batch}, {args.threads} threads", f"the first pipeline, median of {args.repeats}", rows,
               {"label": "pipeline", "value": "x_baseline", "ylabel": "img/s vs the first pipeline"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
