"""Synthetic AliProducts: a dataset in the exact release layout, for tests, demos, CI and scale runs.

No AliProducts images exist on the build machines, so this generator stands in for them. It keeps
the properties the recipe is built around: a long-tailed training set, a fraction of wrong training
labels (the web-crawled noise that O2U and label cleaning target, recorded in `noise.json` for
evaluation only), clean validation labels, palette/RGBA PNGs behind `.jpg` names, grayscale and CMYK
JPEGs, and optionally corrupt files. It reaches AliProducts' 50,030 classes and a million images
(`--size 32x32` makes tiny JPEGs of about 1 KB).

Two long-tail laws (`long_tail_sizes`), chosen with `--tail`. The default stays geometric over the
class counts synth has always supported, so the demo's, ladder's and tests' datasets are unchanged:
- `geometric` (the default up to 504 classes, where the demo, ladder and tests live): sizes fall
  geometrically with rank from the head to 5 images, a straight line on a log-y plot of sorted sizes.
- `lognormal` (the default beyond): the class of rank r (1 = largest) of C gets
  max(1, s * exp(1.3 * z_r)) images, z_r = Phi^-1(1 - (r - 1/2) / C) the standard normal quantile,
  with the scale s set so the sizes sum to `--train-images`. It is AliProducts' shape: at 50,030
  classes and 3M images the largest class has 6,592 images (122 have 1,000 or more), the median 26
  and 12% of the classes have 1-5; at 1M, 2,195 (6), 9 and 37%.
Either way the real-valued sizes are floored and the images left over go to the largest fractional
parts, so the total is exact; ranks are shuffled over classes.

Each class is a visual pattern a small CNN can learn: a background hue, a shape family and a
foreground colour, and beyond the first 504 classes also a background grating (frequency and
orientation), a shape size and a shape position; no two classes share all attributes (98,280 in all).
Every image jitters its class's pattern (size, position, scale, rotation, colour, lighting, noise,
blur) and is seeded from (seed, its row in the file order), so the same arguments give the same bytes
whatever the number of writer processes (`--workers`) or the shard size; a class's pattern does not
depend on the class count either.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import functools
import io
import itertools
import math
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from fastprod.data.pool import worker_pool

SHAPES = ("disc", "ring", "square", "triangle", "diamond", "cross", "star", "stripes", "checker")
BACKGROUND_HUES = tuple(i / 8 for i in range(8))  # light pastel backgrounds
FOREGROUNDS = tuple((i / 6, 0.9, 0.5) for i in range(6)) + ((0.0, 0.0, 0.08),)  # dark HSV colours + near-black
GRATINGS = (None,) + tuple((cycles, math.radians(deg)) for cycles in (2.0, 3.5, 5.0) for deg in (0, 45, 90, 135))
RADII = ((0.24, 0.36), (0.15, 0.21), (0.38, 0.46))  # shape radius over the shorter side: medium, small, large
PLACES = ((0.0, 0.0, 0.15),) + tuple((dx, dy, 0.08) for dy in (-0.2, 0.2) for dx in (-0.2, 0.2))  # offset, jitter
GRATING_DEPTH = 0.25  # the dark stripes of a grating darken the background by up to this fraction
MIN_CLASS_SIZE = 5  # the geometric law's smallest class
LOGNORMAL_SIGMA = 1.3
TAILS = ("geometric", "lognormal")
JPEG_QUALITY = 90
KINDS = ("jpeg", "rgba", "palette", "gray", "cmyk", "truncated", "zero")
SHARD = 1000  # at most this many images per task of the writer pool


class Style(NamedTuple):
    """One class's pattern; the defaults are the plain, centred, medium-size pattern of the first 504 classes."""

    hue: float  # background
    shape: str
    foreground: tuple[float, float, float]  # HSV
    grating: tuple[float, float] | None = None  # (cycles over the shorter side, angle) on the background
    radius: tuple[float, float] = RADII[0]  # range of the shape's radius over the shorter side
    place: tuple[float, float, float] = PLACES[0]  # centre offset (x, y) and its jitter, over the shorter side


BASE_STYLES = tuple(itertools.product(BACKGROUND_HUES, SHAPES, FOREGROUNDS))  # 504
MAX_CLASSES = len(BASE_STYLES) * len(GRATINGS) * len(RADII) * len(PLACES)  # 98,280


@functools.cache
def class_styles(classes: int, seed: int) -> tuple[Style, ...]:
    """One distinct Style per class, chosen by `seed`: the first 504 classes vary background hue, shape and
    foreground colour only (as synth always drew them); further classes take the other combinations of
    grating, radius and place with those three, in a seeded order. class_styles(n)[:k] == class_styles(k)."""
    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be between 2 and {MAX_CLASSES} (got {classes})")
    order = np.random.default_rng([seed, 17]).permutation(len(BASE_STYLES))
    styles = [Style(*BASE_STYLES[i]) for i in order[:classes]]
    if classes > len(BASE_STYLES):
        extras = list(itertools.product(GRATINGS, RADII, PLACES))[1:]  # all but the base's (None, medium, centre)
        more = np.random.default_rng([seed, 18]).permutation(len(extras) * len(BASE_STYLES))[: classes - len(styles)]
        styles += [Style(*BASE_STYLES[i % len(BASE_STYLES)], *extras[i // len(BASE_STYLES)]) for i in more]
    return tuple(styles)


def _largest_root(total_at: Callable[[float], float], total: int, lo: float, hi: float) -> float:
    """The largest x in [lo, hi] with total_at(x) <= total, by bisection (total_at grows with x)."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total_at(mid) <= total else (lo, mid)
    return lo


def tail_law(classes: int, total: int, tail: str) -> np.ndarray:
    """Real-valued training images per class rank, head first, summing to `total`: the `geometric` or
    `lognormal` law of the module docstring."""
    if tail == "geometric":
        if total < MIN_CLASS_SIZE * classes:
            raise ValueError(f"--train-images must be at least {MIN_CLASS_SIZE} x classes = {MIN_CLASS_SIZE * classes}")
        exponents = np.arange(classes)[::-1].astype(np.float64)  # head first
        hi = (total / MIN_CLASS_SIZE) ** (1 / (classes - 1)) + 1.0
        with np.errstate(over="ignore"):  # r**(C-1) overflows to inf above the root at thousands of classes
            ratio = _largest_root(lambda r: MIN_CLASS_SIZE * (r**exponents).sum(), total, 1.0, hi)
        return MIN_CLASS_SIZE * ratio**exponents
    if tail == "lognormal":
        if total < classes:
            raise ValueError(f"--train-images must be at least the number of classes ({classes}) with --tail lognormal")
        normal = statistics.NormalDist()
        shape = np.exp(LOGNORMAL_SIGMA * np.array([normal.inv_cdf(1 - (r + 0.5) / classes) for r in range(classes)]))
        scale = _largest_root(lambda s: np.maximum(1.0, s * shape).sum(), total, 0.0, total / shape.min())
        return np.maximum(1.0, scale * shape)
    raise ValueError(f"--tail must be one of {', '.join(TAILS)} (got {tail!r})")


def long_tail_sizes(classes: int, total: int, rng: np.random.Generator, tail: str = "geometric") -> np.ndarray:
    """Training images per class: the `tail` law rounded to integers that sum to `total` exactly (floors, then
    one more image for the largest fractional parts), its ranks shuffled over classes by `rng`."""
    real = tail_law(classes, total, tail)
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
        angles = (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        sides = [u * math.cos(a) + v * math.sin(a) < 0.55 for a in angles]
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
    """One RGB image of the class `style`; its size varies by +-25% around `size` (W, H). A base style (no
    grating, medium radius, centred) draws exactly the random numbers it always drew, so its pixels are unchanged."""
    w, h = (max(16, round(d * rng.uniform(0.75, 1.25))) for d in size)
    y, x = np.mgrid[0:h, 0:w] + 0.5
    m = min(w, h)
    dx, dy, jitter = style.place
    cx, cy = w / 2 + (dx + rng.uniform(-jitter, jitter)) * m, h / 2 + (dy + rng.uniform(-jitter, jitter)) * m
    radius = m * rng.uniform(*style.radius)
    angle = rng.uniform(-0.35, 0.35) + (math.pi / 4 if style.shape == "stripes" else 0.0)
    u = ((x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)) / radius
    v = (-(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)) / radius

    fh, fs, fv = style.foreground
    background = _hsv(
        style.hue + rng.uniform(-0.02, 0.02), 0.35 + rng.uniform(-0.06, 0.06), 0.9 + rng.uniform(-0.05, 0.05)
    )
    foreground = _hsv(fh + rng.uniform(-0.02, 0.02), fs + rng.uniform(-0.08, 0.08), fv + rng.uniform(-0.08, 0.08))
    light = 1.0 + rng.uniform(-0.12, 0.12) * (x / w - 0.5) + rng.uniform(-0.12, 0.12) * (y / h - 0.5)
    noise = rng.normal(0.0, rng.uniform(2.0, 8.0), (h, w, 3))
    blur = rng.uniform(0.0, 0.9)
    if style.grating is not None:
        cycles, theta = style.grating
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.cos(2 * math.pi * cycles * (x * math.cos(theta) + y * math.sin(theta)) / m + phase)
        background = background * (1.0 - GRATING_DEPTH * (0.5 + 0.5 * wave))[..., None]
    pixels = np.where(_shape_mask(style.shape, u, v)[..., None], foreground, background) * light[..., None] + noise
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
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


class Plan(NamedTuple):
    """Files to write, one row each in file order (train then val, by folder class, by image id); no pixels yet."""

    val: np.ndarray  # bool: in the val split
    filed: np.ndarray  # class folder (the given label)
    true: np.ndarray  # class the pixels are drawn from
    kind: np.ndarray  # index into KINDS
    ids: np.ndarray  # image id number; the file name is f"{id:0{width}d}.jpg"
    width: int

    def rows(self, start: int, stop: int) -> Plan:
        return Plan(*(a[start:stop] for a in self[:5]), self.width)

    def relpath(self, row: int) -> str:
        return f"{'val' if self.val[row] else 'train'}/{self.filed[row]:05d}/{self.ids[row]:0{self.width}d}.jpg"


def _plan(
    classes: int, train_images: int, val_per_class: int, noise: float, corrupt: int, seed: int, tail: str,
) -> tuple[Plan, np.ndarray]:
    """Decide every file (split, class filed under, true class, kind, image id) and the class sizes."""
    rng = np.random.default_rng([seed, 1])
    sizes = long_tail_sizes(classes, train_images, rng, tail)
    filed = np.repeat(np.arange(classes), sizes)
    true = filed.copy()
    noisy = rng.choice(train_images, round(noise * train_images), replace=False)
    true[noisy] = (filed[noisy] + rng.integers(1, classes, len(noisy))) % classes  # any other class, uniformly
    kind = np.zeros(train_images, np.int8)  # jpeg
    n_alpha = max(2, round(0.01 * train_images))
    if train_images < n_alpha + 2:
        raise ValueError(f"--train-images must be at least {n_alpha + 2} (two alpha PNGs, a grayscale and a CMYK JPEG)")
    special = rng.choice(train_images, n_alpha + 2, replace=False)
    kind[special[:n_alpha]] = KINDS.index("rgba") + np.arange(n_alpha) % 2  # rgba, palette, rgba, ...
    kind[special[n_alpha:]] = [KINDS.index("gray"), KINDS.index("cmyk")]
    broken = rng.integers(0, classes, corrupt)
    val_labels = np.repeat(np.arange(classes), val_per_class)

    filed = np.concatenate([filed, broken, val_labels])
    true = np.concatenate([true, broken, val_labels])
    kind = np.concatenate([kind, KINDS.index("truncated") + np.arange(corrupt) % 2, np.zeros(len(val_labels), np.int8)])
    val = np.arange(len(filed)) >= train_images + corrupt
    population = max(10**7, 10 * len(filed))
    ids = rng.choice(population, len(filed), replace=False)
    order = np.lexsort((ids, filed, val))
    return Plan(val[order], filed[order], true[order], kind[order], ids[order], len(str(population - 1))), sizes


def _write_shard(
    shard: tuple[int, Plan], *, out: Path, seed: int, size: tuple[int, int], classes: int,
) -> tuple[int, int]:
    """Render and write one shard's files; the image in row r of the whole plan is seeded from (seed, r).
    Returns (files, bytes)."""
    start, rows = shard
    styles = class_styles(classes, seed)
    written = 0
    for j in range(len(rows.ids)):
        data = encode(render(styles[rows.true[j]], np.random.default_rng([seed, start + j]), size), KINDS[rows.kind[j]])
        (out / rows.relpath(j)).write_bytes(data)
        written += len(data)
    return len(rows.ids), written


def synthesize(
    out: str | Path, *, classes: int = 20, train_images: int = 2000, val_per_class: int = 10, noise: float = 0.2,
    seed: int = 0, size: tuple[int, int] = (96, 96), corrupt: int = 0, workers: int | None = None,
    tail: str | None = None,
) -> dict:
    """Write the dataset under `out` (which must be empty or absent) and return summary statistics. `tail`
    defaults to geometric up to 504 classes and lognormal beyond; `workers` writer processes (default: all cores)."""
    out = Path(out)
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"--noise must be in [0, 1) (got {noise})")
    if val_per_class < 0 or corrupt < 0:
        raise ValueError("--val-per-class and --corrupt must be >= 0")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; synth writes into a new directory")
    class_styles(classes, seed)  # checks --classes
    tail = tail or ("geometric" if classes <= len(BASE_STYLES) else "lognormal")
    plan, sizes = _plan(classes, train_images, val_per_class, noise, corrupt, seed, tail)

    for split in ("train", "val"):
        for c in range(classes):
            (out / split / f"{c:05d}").mkdir(parents=True, exist_ok=True)
    files = len(plan.ids)
    workers = max(1, workers or os.cpu_count() or 1)
    shard = max(1, min(SHARD, files // (8 * workers)))  # >= 8 shards a process, so they finish together
    shards = ((start, plan.rows(start, start + shard)) for start in range(0, files, shard))
    write = functools.partial(_write_shard, out=out, seed=seed, size=size, classes=classes)
    written = 0
    with tqdm(total=files, desc="synth", unit="img") as progress:
        with worker_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
            for n, nbytes in pool.imap_unordered(write, shards) if pool else map(write, shards):
                progress.update(n)
                written += nbytes

    for split, rows in (("train", ~plan.val), ("val", plan.val)):
        entries = (
            f'{{"image_id": "{i:0{plan.width}d}.jpg", "class_id": "{c:05d}"}}'  # as json.dumps writes the dict
            for i, c in zip(plan.ids[rows].tolist(), plan.filed[rows].tolist())
        )
        (out / f"{split}.json").write_text('{"images": [' + ", ".join(entries) + "]}")
    noisy = np.flatnonzero(plan.filed != plan.true)
    noisy = noisy[np.argsort(plan.ids[noisy])]
    lines = (
        f'"{i:0{plan.width}d}.jpg": {{"given": "{g:05d}", "true": "{t:05d}"}}'
        for i, g, t in zip(plan.ids[noisy].tolist(), plan.filed[noisy].tolist(), plan.true[noisy].tolist())
    )
    (out / "noise.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one image per line
    kinds = dict(zip(KINDS, np.bincount(plan.kind, minlength=len(KINDS)).tolist()))
    return {
        "out": str(out), "classes": classes, "tail": tail, "train_images": train_images,
        "val_images": val_per_class * classes, "noisy": len(noisy), "corrupt": corrupt,
        "alpha_png": kinds["rgba"] + kinds["palette"], "grayscale_jpeg": kinds["gray"], "cmyk_jpeg": kinds["cmyk"],
        "class_size_min": int(sizes.min()), "class_size_median": float(np.median(sizes)),
        "class_size_max": int(sizes.max()), "files_written": files + 3, "bytes_written": written,
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
            tail=args.tail,
        )
    except (ValueError, FileExistsError) as err:
        print(f"fastprod synth: error: {err}", file=sys.stderr)
        return 2
    print(
        f"Wrote {s['files_written']} files ({s['bytes_written'] / 1e6:.1f} MB) to {s['out']}: {s['classes']} classes, "
        f"{s['train_images']} training images ({s['tail']} tail: class sizes min {s['class_size_min']}, median "
        f"{s['class_size_median']:g}, max {s['class_size_max']}), {s['val_images']} validation images; "
        f"{s['noisy']} training labels replaced by a wrong class (listed in noise.json), {s['alpha_png']} PNGs "
        f"with alpha, {s['grayscale_jpeg']} grayscale and {s['cmyk_jpeg']} CMYK JPEGs, {s['corrupt']} corrupt files."
    )
    return 0


def register(subparsers) -> None:
    """Add `fastprod synth OUT ...`."""
    p = subparsers.add_parser("synth", help="write a synthetic dataset in the AliProducts layout")
    p.add_argument("out", type=Path, help="output directory (new or empty)")
    p.add_argument("--classes", type=int, default=20, help=f"number of classes, 2 to {MAX_CLASSES:,} (default 20)")
    p.add_argument("--train-images", type=int, default=2000, help="training images, long-tailed over classes (exact)")
    p.add_argument("--tail", choices=TAILS, default=None,
                   help="class-size law (default: geometric up to 504 classes, lognormal beyond)")
    p.add_argument("--val-per-class", type=int, default=10, help="validation images per class (clean labels)")
    p.add_argument("--noise", type=float, default=0.2, help="fraction of training labels made wrong (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_parse_size, default=(96, 96), help="mean image size WxH (each varies +-25%%)")
    p.add_argument("--corrupt", type=int, default=0, help="extra corrupt training files (truncated / zero-byte)")
    p.add_argument("--workers", type=int, default=None, help="writer processes (default: all cores)")
    p.set_defaults(func=_run)
