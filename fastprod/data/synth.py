"""Synthetic AliProducts: a small dataset in the exact release layout, for tests, demos and CI.

No AliProducts images exist on the build machines, so this generator stands in for them. It keeps
the properties the recipe is built around: a long-tailed training set (5 images for the rarest class,
hundreds for the head), a fraction of wrong training labels (the web-crawled noise that O2U and
label cleaning target, recorded in `noise.json` for evaluation only), clean validation labels,
palette/RGBA PNGs behind `.jpg` names, grayscale and CMYK JPEGs, and optionally corrupt files.

Each class is a visual pattern a small CNN can learn at 64x64: a background hue, a shape family and
a foreground colour, enumerated so that no two classes share all three, with per-image jitter of
size, position, scale, rotation, colour, lighting, noise and blur. Every image is seeded from
(seed, index), so the same arguments give the same bytes whatever the number of workers.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import itertools
import json
import math
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from fastprod.data.pool import worker_pool

SHAPES = ("disc", "ring", "square", "triangle", "diamond", "cross", "star", "stripes", "checker")
BACKGROUND_HUES = tuple(i / 8 for i in range(8))  # light pastel backgrounds
FOREGROUNDS = tuple((i / 6, 0.9, 0.5) for i in range(6)) + ((0.0, 0.0, 0.08),)  # dark HSV colours + near-black
MIN_CLASS_SIZE = 5
JPEG_QUALITY = 90

Style = tuple[float, str, tuple[float, float, float]]  # (background hue, shape, foreground HSV)


def class_styles(classes: int, seed: int) -> list[Style]:
    """One distinct (background hue, shape, foreground) combination per class, chosen by `seed`."""
    combos = list(itertools.product(BACKGROUND_HUES, SHAPES, FOREGROUNDS))
    if not 2 <= classes <= len(combos):
        raise ValueError(f"--classes must be between 2 and {len(combos)} (got {classes})")
    order = np.random.default_rng([seed, 17]).permutation(len(combos))
    return [combos[i] for i in order[:classes]]


def long_tail_sizes(classes: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Training images per class: sizes fall geometrically with rank from the head to MIN_CLASS_SIZE
    (a straight line on a log-y plot of sorted sizes) and sum to `total`; ranks are shuffled over classes."""
    if total < MIN_CLASS_SIZE * classes:
        raise ValueError(f"--train-images must be at least {MIN_CLASS_SIZE} x classes = {MIN_CLASS_SIZE * classes}")
    exponents = np.arange(classes)[::-1].astype(np.float64)  # head first
    lo, hi = 1.0, (total / MIN_CLASS_SIZE) ** (1 / (classes - 1)) + 1.0
    for _ in range(200):  # bisect the ratio r so that MIN * sum(r^k) == total
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if MIN_CLASS_SIZE * (mid**exponents).sum() <= total else (lo, mid)
    real = MIN_CLASS_SIZE * lo**exponents
    sizes = np.floor(real).astype(np.int64)
    leftover = total - int(sizes.sum())
    sizes[np.argsort(sizes - real, kind="stable")[:leftover]] += 1  # largest fractional parts first
    return sizes[rng.permutation(classes)]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Foreground mask in shape coordinates (unit radius, already rotated and scaled)."""
    r, box = np.hypot(u, v), np.maximum(np.abs(u), np.abs(v))
    if shape == "disc":
        return r < 1.0
    if shape == "ring":
        return (r < 1.0) & (r > 0.6)
    if shape == "square":
        return box < 0.85
    if shape == "diamond":
        return np.abs(u) + np.abs(v) < 1.1
    if shape == "triangle":
        sides = [u * math.cos(a) + v * math.sin(a) < 0.55 for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
        return sides[0] & sides[1] & sides[2]
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0))
    if shape == "star":
        return r < 0.45 + 0.6 * ((np.cos(5 * np.arctan2(v, u)) + 1) / 2) ** 2
    if shape == "stripes":
        return (box < 1.0) & (np.sin(u * 2.5 * math.pi) > 0)
    if shape == "checker":
        return (box < 1.0) & ((np.floor(u * 2) + np.floor(v * 2)) % 2 == 0)
    raise ValueError(f"unknown shape {shape!r}")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255.0


def render(style: Style, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One RGB image of the class `style`; its size varies by +-25% around `size` (W, H)."""
    hue, shape, (fh, fs, fv) = style
    w, h = (max(16, round(d * rng.uniform(0.75, 1.25))) for d in size)
    y, x = np.mgrid[0:h, 0:w] + 0.5
    m = min(w, h)
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * m, h / 2 + rng.uniform(-0.15, 0.15) * m
    radius = m * rng.uniform(0.24, 0.36)
    angle = rng.uniform(-0.35, 0.35) + (math.pi / 4 if shape == "stripes" else 0.0)
    dx, dy = x - cx, y - cy
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / radius
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / radius

    background = _hsv(hue + rng.uniform(-0.02, 0.02), 0.35 + rng.uniform(-0.06, 0.06), 0.9 + rng.uniform(-0.05, 0.05))
    foreground = _hsv(fh + rng.uniform(-0.02, 0.02), fs + rng.uniform(-0.08, 0.08), fv + rng.uniform(-0.08, 0.08))
    pixels = np.where(_shape_mask(shape, u, v)[..., None], foreground, background)
    light = 1.0 + rng.uniform(-0.12, 0.12) * (x / w - 0.5) + rng.uniform(-0.12, 0.12) * (y / h - 0.5)
    pixels = pixels * light[..., None] + rng.normal(0.0, rng.uniform(2.0, 8.0), pixels.shape)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    blur = rng.uniform(0.0, 0.9)
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.2 else image


def _cutout_alpha(w: int, h: int) -> np.ndarray:
    """Alpha of a product cut-out: opaque centre, transparent frame, a few pixels of soft edge."""
    y, x = np.mgrid[0:h, 0:w] + 0.5
    inside = np.minimum(np.minimum(x, w - x), np.minimum(y, h - y)) - 0.08 * min(w, h)
    return np.clip(inside * 64, 0, 255).astype(np.uint8)


def encode(image: Image.Image, kind: str) -> bytes:
    """File bytes for one image of `kind` (jpeg, gray, cmyk, rgba, palette, truncated or zero)."""
    buf = io.BytesIO()
    if kind == "zero":
        return b""
    if kind in ("jpeg", "truncated"):
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
    elif kind == "gray":
        image.convert("L").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif kind == "cmyk":
        image.convert("CMYK").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif kind == "rgba":
        image.putalpha(Image.fromarray(_cutout_alpha(*image.size), "L"))
        image.save(buf, "PNG")
    elif kind == "palette":
        quantized = image.quantize(255)
        index = np.array(quantized)
        index[_cutout_alpha(*image.size) < 128] = 255  # the transparent entry; black if alpha is dropped
        palette = (quantized.getpalette() or [])[: 255 * 3]
        out = Image.fromarray(index, "P")
        out.putpalette(palette + [0] * (256 * 3 - len(palette)))
        out.save(buf, "PNG", transparency=255)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    data = buf.getvalue()
    return data[: len(data) // 2] if kind == "truncated" else data


def _write_one(job: tuple[int, str, int, str], *, out: Path, seed: int, size: tuple[int, int], styles: list[Style]) -> int:
    index, relpath, label, kind = job
    data = encode(render(styles[label], np.random.default_rng([seed, index]), size), kind)
    (out / relpath).write_bytes(data)
    return len(data)


def _plan(classes: int, train_images: int, val_per_class: int, noise: float, corrupt: int, seed: int):
    """Decide every file: (split, class filed under, true class, kind, image_id); no pixels yet."""
    rng = np.random.default_rng([seed, 1])
    sizes = long_tail_sizes(classes, train_images, rng)
    filed = np.repeat(np.arange(classes), sizes)
    true = filed.copy()
    noisy = rng.choice(train_images, round(noise * train_images), replace=False)
    shift = rng.integers(1, classes, len(noisy))
    true[noisy] = (filed[noisy] + shift) % classes  # any other class, uniformly
    kinds = np.full(train_images, "jpeg", dtype=object)
    n_alpha = max(2, round(0.01 * train_images))
    special = rng.choice(train_images, n_alpha + 2, replace=False)
    kinds[special[:n_alpha]] = ["rgba" if i % 2 == 0 else "palette" for i in range(n_alpha)]
    kinds[special[n_alpha:]] = ["gray", "cmyk"]

    rows = [("train", int(f), int(t), str(k)) for f, t, k in zip(filed, true, kinds)]
    for i, c in enumerate(rng.integers(0, classes, corrupt)):
        rows.append(("train", int(c), int(c), "truncated" if i % 2 == 0 else "zero"))
    rows += [("val", c, c, "jpeg") for c in range(classes) for _ in range(val_per_class)]
    population = max(10**7, 10 * len(rows))
    width = len(str(population - 1))
    ids = rng.choice(population, len(rows), replace=False)
    planned = [(*row, f"{i:0{width}d}.jpg") for row, i in zip(rows, ids)]
    planned.sort(key=lambda r: (r[0] != "train", r[1], r[4]))  # train then val, by class, by id
    return planned, sizes


def synthesize(
    out: str | Path, *, classes: int = 20, train_images: int = 2000, val_per_class: int = 10, noise: float = 0.2,
    seed: int = 0, size: tuple[int, int] = (96, 96), corrupt: int = 0, workers: int | None = None,
) -> dict:
    """Write the dataset under `out` (which must be empty or absent) and return summary statistics."""
    out = Path(out)
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"--noise must be in [0, 1) (got {noise})")
    if val_per_class < 0 or corrupt < 0:
        raise ValueError("--val-per-class and --corrupt must be >= 0")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; synth writes into a new directory")
    styles = class_styles(classes, seed)
    planned, sizes = _plan(classes, train_images, val_per_class, noise, corrupt, seed)

    class_ids = [f"{c:05d}" for c in range(classes)]
    for split in ("train", "val"):
        for cid in class_ids:
            (out / split / cid).mkdir(parents=True, exist_ok=True)
    jobs = [(i, f"{split}/{class_ids[filed]}/{image_id}", true, kind) for i, (split, filed, true, kind, image_id) in enumerate(planned)]
    write = partial(_write_one, out=out, seed=seed, size=size, styles=styles)
    workers = max(1, workers or os.cpu_count() or 1)
    progress = partial(tqdm, total=len(jobs), desc="synth", unit="img")
    if workers == 1:
        written = sum(progress(map(write, jobs)))
    else:
        with worker_pool(workers) as pool:
            written = sum(progress(pool.imap_unordered(write, jobs, chunksize=max(1, min(64, len(jobs) // (8 * workers))))))

    for split in ("train", "val"):
        entries = [{"image_id": r[4], "class_id": class_ids[r[1]]} for r in planned if r[0] == split]
        (out / f"{split}.json").write_text(json.dumps({"images": entries}))
    noisy = {r[4]: {"given": class_ids[r[1]], "true": class_ids[r[2]]} for r in planned if r[1] != r[2]}
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(noisy.items())]
    (out / "noise.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one image per line
    kinds = [r[3] for r in planned]
    return {
        "out": str(out), "classes": classes, "train_images": train_images, "val_images": val_per_class * classes,
        "noisy": len(noisy), "corrupt": corrupt, "alpha_png": kinds.count("rgba") + kinds.count("palette"),
        "grayscale_jpeg": kinds.count("gray"), "cmyk_jpeg": kinds.count("cmyk"),
        "class_size_min": int(sizes.min()), "class_size_median": float(np.median(sizes)),
        "class_size_max": int(sizes.max()), "files_written": len(jobs) + 3, "bytes_written": int(written),
    }


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 96x96 (got {text!r})") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16 (got {text!r})")
    return w, h


def _run(args: argparse.Namespace) -> int:
    try:
        s = synthesize(
            args.out, classes=args.classes, train_images=args.train_images, val_per_class=args.val_per_class,
            noise=args.noise, seed=args.seed, size=args.size, corrupt=args.corrupt, workers=args.workers,
        )
    except (ValueError, FileExistsError) as err:
        print(f"fastprod synth: error: {err}", file=sys.stderr)
        return 2
    print(
        f"Wrote {s['files_written']} files ({s['bytes_written'] / 1e6:.1f} MB) to {s['out']}: {s['classes']} classes, "
        f"{s['train_images']} training images (class sizes min {s['class_size_min']}, median "
        f"{s['class_size_median']:g}, max {s['class_size_max']}), {s['val_images']} validation images; "
        f"{s['noisy']} training labels replaced by a wrong class (listed in noise.json), {s['alpha_png']} PNGs "
        f"with alpha, {s['grayscale_jpeg']} grayscale and {s['cmyk_jpeg']} CMYK JPEGs, {s['corrupt']} corrupt files."
    )
    return 0


def register(subparsers) -> None:
    """Add `fastprod synth OUT ...`."""
    p = subparsers.add_parser("synth", help="write a synthetic dataset in the AliProducts layout")
    p.add_argument("out", type=Path, help="output directory (new or empty)")
    p.add_argument("--classes", type=int, default=20, help="number of classes (default 20)")
    p.add_argument("--train-images", type=int, default=2000, help="training images, long-tailed over classes")
    p.add_argument("--val-per-class", type=int, default=10, help="validation images per class (clean labels)")
    p.add_argument("--noise", type=float, default=0.2, help="fraction of training labels made wrong (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_parse_size, default=(96, 96), help="mean image size WxH (each varies +-25%%)")
    p.add_argument("--corrupt", type=int, default=0, help="extra corrupt training files (truncated / zero-byte)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=_run)
