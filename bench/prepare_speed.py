"""Dataset ingestion (`fastprod prepare`) throughput against a bare PIL open + decode loop, in one run.

    .venv/bin/python bench/prepare_speed.py [--images 2000] [--sizes 32 512] [--workers 2] [--reps 3] [--json FILE]

For each image side in --sizes, --images JPEGs (quality 90, a smooth colour field with a block and
noise; AliProducts' class-folder layout, 50 classes) are written under --work once. Then, interleaved
--reps times, each timed end to end (process pool start-up included):
  bare loop        Image.open(path).load() over every file, in a pool of --workers processes (the
                   same forkserver pool prepare uses), paths handed out in the same chunks
  prepare          `fastprod prepare` into a fresh directory: discovery, stat and symlink checks, the
                   probe (a full decode, JPEG at 1/8 DCT scale), quarantine, manifest, cache and summary
                   files, class_sizes.png
  prepare, cached  the same again over the same output: every file's size and mtime match the probe cache
The files are in the page cache (a warm-up pass reads them first). Reported: img/s (median) and its
ratio to the bare loop's; the target for prepare's full probe is >= 0.8x. Fixed costs (the workers'
start-up, ~0.5 s; class_sizes.png, ~0.3 s) weigh on small runs: the quick suite's 200 images only
check that it runs; the ratio means something from ~10,000 images.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fastprod.data.pool import worker_pool


def write_jpegs(root: Path, n: int, side: int, classes: int = 50, seed: int = 0) -> list[str]:
    """n JPEGs of side x side in root/<class>/<id>.jpg; their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        field = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
        img = np.asarray(field, dtype=np.float32)
        img[side // 4: side // 2, side // 4: side // 2] = rng.random(3) * 255
        img += rng.normal(0, 6, img.shape)
        path = root / f"{i % classes:05d}" / f"{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def decode(path: str) -> int:
    with Image.open(path) as im:
        im.load()
        return im.width


def bare_loop(paths: list[str], workers: int) -> None:
    """Open and decode every file in a pool of `workers` processes, chunked as prepare's probe is."""
    with worker_pool(workers) as pool:
        chunk = max(1, min(256, len(paths) // (workers * 16)))
        for _ in pool.imap(decode, paths, chunksize=chunk):
            pass


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    # imported here: the bare loop's workers import this module, and should not pay for torch or pyarrow
    from results import write_json

    from fastprod.data.prepare import prepare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/fastprod_bench_prepare"))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 512], help="image sides in pixels")
    p.add_argument("--workers", type=int, default=2, help="processes, for both prepare and the bare loop")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the result file (bench/results.py) here")
    args = p.parse_args()
    rows = []
    print(f"| images | side | pipeline | img/s (median of {args.reps}) | x bare loop |\n|---|---|---|---|---|")
    for side in args.sizes:
        root, out = args.work / f"{args.images}x{side}", args.work / f"prepared-{args.images}x{side}"
        shutil.rmtree(root, ignore_errors=True)
        paths = write_jpegs(root, args.images, side)
        bare_loop(paths, args.workers)  # warm-up: page cache, forkserver

        def fresh() -> None:
            shutil.rmtree(out, ignore_errors=True)
            prepare(root, out, workers=args.workers)

        runs = {"bare PIL open+decode loop (baseline)": lambda: bare_loop(paths, args.workers),
                "prepare": fresh, "prepare, cached re-run": lambda: prepare(root, out, workers=args.workers)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.reps):
            for name, run in runs.items():
                times[name].append(timed(run))
        base = args.images / statistics.median(times["bare PIL open+decode loop (baseline)"])
        for name, t in times.items():
            rate = args.images / statistics.median(t)
            print(f"| {args.images} | {side} | {name} | {rate:.0f} | {rate / base:.2f} |")
            rows.append({"pipeline": f"{name}, {side}px", "images": args.images, "side": side, "img_per_s": rate,
                         "x_baseline": rate / base})
    write_json(args.json, "prepare_speed", f"`fastprod prepare` vs a bare PIL decode loop, {args.images} JPEGs, "
               f"{args.workers} processes", "the bare PIL open+decode loop of the same files and processes, "
               f"median of {args.reps}", rows, {"label": "pipeline", "value": "x_baseline", "ylabel": "img/s vs the bare loop"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
