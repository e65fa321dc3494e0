"""TTA scoring engines: views/s and images/s per backend against eager in the same run.

    .venv/bin/python bench/tta_engines.py [--model resnet18] [--size 128] [--classes 1000]
        [--views 2] [--batch 32] [--backends eager onnxruntime onnxruntime:int8 inductor] [--reps 5] [--json FILE]

Each backend is exported with `fastprod.score.engine.export_engine` from the same random-init
weights (a run directory in the trainer's layout, made in a temporary folder) and called on the same
uint8 batch of `--batch` views; the reps are interleaved across backends (round robin), so a
machine shared with other work slows all of them alike. images/s = views/s / --views. The output
of each engine is compared with eager (max abs difference of the probabilities). Export time
(the inductor AOT compile) is reported separately and not counted in the throughput.
BACKEND:PRECISION picks a precision (onnxruntime:int8 is calibrated on another random batch: its
difference to eager says little about accuracy on real images, which tests/score/test_score.py checks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from results import hardware, write_json

from fastprod.config import load_config, save_config
from fastprod.models import create_model
from fastprod.score.engine import Engine, export_engine
from fastprod.score.tta import Views


def make_run(directory: Path, model: str, size: int, classes: int) -> Path:
    (directory / "manifest").mkdir(parents=True)
    (directory / "manifest" / "classes.json").write_text(json.dumps({"root": "", "class_ids": [f"{c:05d}" for c in range(classes)]}))
    cfg = load_config(None, [f"data.manifest={directory / 'manifest'}", f"data.image_size={size}", f"model.name={model}"])
    save_config(cfg, directory / "resolved.yaml")
    (directory / "final").mkdir()
    torch.manual_seed(0)
    torch.save(create_model(cfg.model, classes).state_dict(), directory / "final" / "model.pt")
    return directory / "final" / "model.pt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--views", type=int, default=2, help="views per image (center, and its mirror if 2)")
    ap.add_argument("--batch", type=int, default=32, help="views per engine call")
    ap.add_argument("--backends", nargs="+", default=["eager", "onnxruntime", "onnxruntime:int8", "inductor"],
                    help="BACKEND or BACKEND:PRECISION")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tta-"))
    ckpt = make_run(tmp / "run", args.model, args.size, args.classes)
    views = Views(args.size, (1.14,), ("center",), (False, True) if args.views == 2 else (False,))
    x = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    print(f"{hardware()}\n{args.model} {args.size}px, {args.classes} classes, batch {args.batch} views")
    engines, export_s = {}, {}
    calibration = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for backend in ["eager"] + [b for b in args.backends if b != "eager"]:
        name, _, precision = backend.partition(":")
        t = time.perf_counter()
        try:
            engines[backend] = Engine(export_engine(
                [ckpt], tmp / backend.replace(":", "-"), backend=name, precision=precision or "fp32", views=views,
                max_batch=max(args.batch, 2), calibration=calibration if precision == "int8" else None), "cpu")
        except Exception as err:  # e.g. tensorrt without TensorRT: report and go on
            print(f"{backend}: not available ({type(err).__name__}: {str(err)[:200]})")
            continue
        export_s[backend] = time.perf_counter() - t
        engines[backend](x)  # warm-up (oneDNN primitives, ORT arena)
    ref = engines["eager"](x)
    times = {b: [] for b in engines}
    for _ in range(args.reps):
        for backend, engine in engines.items():
            t = time.perf_counter()
            engine(x)
            times[backend].append(time.perf_counter() - t)
    eager_s = statistics.median(times["eager"])
    rows = []
    for backend, engine in engines.items():
        s = statistics.median(times[backend])
        rows.append({"backend": backend, "views_per_s": args.batch / s, "images_per_s": args.batch / s / len(views),
                     "x_eager": eager_s / s, "export_s": export_s[backend],
                     "max_abs_diff_vs_eager": float((engine(x) - ref).abs().max())})
    print(f"{'backend':<18}{'views/s':>10}{'img/s':>9}{'x eager':>9}{'export s':>10}{'max |diff|':>12}")
    for r in rows:
        print(f"{r['backend']:<18}{r['views_per_s']:>10.1f}{r['images_per_s']:>9.1f}{r['x_eager']:>9.2f}"
              f"{r['export_s']:>10.1f}{r['max_abs_diff_vs_eager']:>12.1e}")
    write_json(args.json, "tta_engines", f"TTA engines, {args.model} {args.size}px, {args.classes} classes, "
               f"batch {args.batch} views", "eager (fp32, channels_last) in the same run", rows,
               {"label": "backend", "value": "x_eager", "ylabel": "x eager"})
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
