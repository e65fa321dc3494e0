"""`fastprod prepare ROOT --out DIR`: dataset ingestion and quarantine, the first stage of the recipe.

Indexes an AliProducts release (`train.json`, `val.json`, optional `test.json`, images under
`<split>/<class_id>/<image_id>`) or a plain folder tree (`ROOT/{train,val}/<class>/<image>` or
`ROOT/<class>/<image>`), decodes every image once in parallel (`images.probe`), moves the corrupt,
truncated, empty and missing ones to `quarantine.csv`, fixes the class mapping (sorted class ids of
train and val) and writes the manifest, a summary and a class-size plot (see `manifest`).

Images beyond `--max-aspect` (default 20:1) or `--max-pixels` (default 64 megapixels) are quarantined
too, from their header alone: evaluation resizes the short side to the model size, so a tiny 1 x 400,000
PNG would cost gigabytes when scored. Both limits are recorded in summary.json.

Nothing in the raw data stops the scan with a traceback: symlink loops, broken symlinks and symlinks
whose target lies outside the root (unless `--follow-symlinks`) are quarantined with that reason, and
so are names that cannot be stored as UTF-8 text (file names with bytes that are not UTF-8, ids with
NUL or lone surrogates), with their path escaped losslessly (`escape_name`). A split JSON that cannot
be read, parsed (however deeply nested) or understood is a `DatasetError` naming the file, which the
command prints as `fastprod prepare: error: ...` (exit code 2).

Probe results are cached in `DIR/probe_cache.parquet` by absolute path, size and mtime (and the limits
they were checked against), so re-running on an unchanged root with the same limits only stats the files.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import functools
import gc
import json
import math
import os
import re
import stat
import sys
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from fastprod.data.images import MAX_ASPECT, MAX_PIXELS, ProbeResult, failed, probe_chunk
from fastprod.data.manifest import CLASS_SIZES_PLOT, DatasetError, Manifest, write_quarantine
from fastprod.data.pool import worker_pool
from fastprod.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROBE_CACHE = "probe_cache.parquet"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)
_CACHE_SCHEMA = pa.schema([
    ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("width", pa.int32()),
    ("height", pa.int32()), ("format", pa.string()), ("mode", pa.string()), ("reason", pa.string()),
])


@dataclass(frozen=True)
class Entry:
    """One listed image: path relative to the root, image id, class id ("" when unlabelled), split."""

    path: str
    image_id: str
    class_id: str
    split: str

FEW_CLASSES = 50  # up to this many classes, class_sizes.png marks each class on a linear rank axis
OUTSIDE_ROOT = "symlink to a target outside the dataset root (--follow-symlinks accepts it)"
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")  # NUL and lone surrogates: not storable as UTF-8 text
_ESCAPED = re.compile(r"[\\\x00\ud800-\udfff]")  # what escape_name rewrites: those and the backslash


def name_problem(name: str) -> str:
    """Why `name` cannot be stored as text in quarantine.csv and the parquet files ("" when it can)."""
    if not _UNSTORABLE.search(name):  # the usual case, one search: the cases below all match it
        return ""
    if "\x00" in name:
        return "name contains a NUL byte (path stored escaped)"
    if re.search(r"[\udc80-\udcff]", name):  # how Python decodes the bytes of a file name that are not UTF-8
        return "name is not valid UTF-8 (path stored escaped)"
    if _UNSTORABLE.search(name):
        return "name is not valid Unicode: lone surrogate (path stored escaped)"
    return ""


def _escape_char(match: re.Match) -> str:
    code = ord(match[0])
    if match[0] == "\\":
        return "\\\\"
    if code == 0 or 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code & 0xFF:02x}"
    return f"\\u{code:04x}"


def escape_name(name: str) -> str:
    r"""`name` unchanged when it is storable (no `name_problem`); otherwise escaped losslessly: a backslash
    becomes \\, NUL \x00, a byte NN of a file name that is not UTF-8 (Python's surrogateescape U+DCNN)
    \xNN, any other lone surrogate \uNNNN."""
    return _ESCAPED.sub(_escape_char, name) if _UNSTORABLE.search(name) else name


def _read_split_json(file: Path, split: str, labelled: bool) -> list[Entry]:
    """The entries of an AliProducts `<split>.json`; any deviation from the format is a `DatasetError`."""
    try:
        doc = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{file}: not valid JSON ({err})") from None
    except RecursionError:  # nested deeper than Python's parser allows (no real dataset nests so deep)
        raise DatasetError(f"{file}: not valid JSON (nested too deeply)") from None
    except OSError as err:
        raise DatasetError(f"{file}: cannot be read ({err.strerror})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DatasetError(f'{file}: expected an object with an "images" list')
    entries, seen = [], {}
    for i, item in enumerate(doc["images"]):
        if not isinstance(item, dict):
            raise DatasetError(f"{file}: entry {i} is not an object: {item!r:.80}")
        image_id = item.get("image_id")
        if not isinstance(image_id, str) or not image_id or image_id in (".", "..") or "/" in image_id or "\\" in image_id:
            raise DatasetError(f"{file}: entry {i} has no valid image_id (a file name string): {item!r:.80}")
        class_id = item.get("class_id", "") if labelled else ""
        if labelled and (not isinstance(class_id, str) or not class_id or "/" in class_id or class_id in (".", "..")):
            got = f"{type(class_id).__name__} {class_id!r:.40}" if "class_id" in item else "nothing"
            raise DatasetError(f"{file}: entry {i} ({image_id}): class_id must be a non-empty string, got {got}")
        path = f"{split}/{class_id}/{image_id}" if labelled else f"{split}/{image_id}"
        if path in seen:
            raise DatasetError(f"{file}: entry {i} repeats {path} (first listed at entry {seen[path]})")
        seen[path] = i
        entries.append(Entry(path, image_id, class_id, split))
    return entries


def _is_image(name: str) -> bool:
    # the extension splitext would find: without a leading dot, the last dot is the one of the suffix
    return not name.startswith(".") and name.lower().endswith(_IMAGE_SUFFIXES)


def _kind(entry: os.DirEntry) -> str:
    """"dir", "file", "loop" (a symlink loop), "symlink" (to nothing, or to neither a file nor a folder) or "other"."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:  # ELOOP: too many levels of symbolic links
        return "loop"
    return "symlink" if entry.is_symlink() else "other"


def _scan_class_folders(root: Path, prefix: str, split: str) -> tuple[list[Entry], int]:
    """Entries of `root/prefix/<class>/<image>`, sorted; also the number of non-image files ignored.
    Class folders that are symlink loops and image-named symlinks that do not lead to a file are listed
    too, so that `probe_all` quarantines them with their reason."""
    base = root / prefix if prefix else root
    entries, ignored = [], 0
    for class_dir in sorted((d for d in os.scandir(base) if not d.name.startswith(".")), key=lambda d: d.name):
        kind = _kind(class_dir)
        rel_dir = f"{prefix}/{class_dir.name}" if prefix else class_dir.name
        if kind == "loop":
            entries.append(Entry(rel_dir, "", class_dir.name, split))
        if kind != "dir":
            continue
        for f in sorted(os.scandir(class_dir.path), key=lambda f: f.name):
            if _is_image(f.name) and _kind(f) in ("file", "loop", "symlink"):
                entries.append(Entry(f"{rel_dir}/{f.name}", f.name, class_dir.name, split))
            else:
                ignored += 1
    return entries, ignored


def discover(root: Path) -> tuple[list[Entry], str, int]:
    """Every listed image under `root`, the layout found ("aliproducts", "split-folders" or "class-folders")
    and the number of non-image files ignored in folder trees."""
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a directory")
    if (root / "train.json").is_file():
        entries = _read_split_json(root / "train.json", "train", labelled=True)
        if (root / "val.json").is_file():
            entries += _read_split_json(root / "val.json", "val", labelled=True)
        if (root / "test.json").is_file():
            entries += _read_split_json(root / "test.json", "test", labelled=False)
        return entries, "aliproducts", 0
    if (root / "train").is_dir():
        entries, ignored = _scan_class_folders(root, "train", "train")
        if (root / "val").is_dir():
            val, more = _scan_class_folders(root, "val", "val")
            entries, ignored = entries + val, ignored + more
        return entries, "split-folders", ignored
    entries, ignored = _scan_class_folders(root, "", "train")
    return entries, "class-folders", ignored


def _cache_limits(max_aspect: float, max_pixels: int) -> dict[bytes, bytes]:
    """The parquet metadata that ties cached probe results to the limits they were checked against."""
    return {b"max_aspect": repr(float(max_aspect)).encode(), b"max_pixels": str(int(max_pixels)).encode()}


def _load_cache(file: Path, limits: dict[bytes, bytes]) -> dict[str, tuple[int, int, ProbeResult]]:
    """Cached results by absolute path; none when the cache was written under other limits."""
    if not file.is_file():
        return {}
    try:
        table = pq.read_table(file)
        columns = [column.to_pylist() for column in table.cast(_CACHE_SCHEMA).columns]  # by column: no dict per row
    except (pa.ArrowException, OSError, ValueError) as err:
        warnings.warn(f"ignoring unreadable probe cache {file}: {err}")
        return {}
    if {k: v for k, v in (table.schema.metadata or {}).items() if k in limits} != limits:
        return {}
    paths, sizes, mtimes, *result_columns = columns
    return {path: (size, mtime, result) for path, size, mtime, result in zip(paths, sizes, mtimes, zip(*result_columns))}


def _stat_entry(root: str, rel: str, real_dirs: dict[str, str], follow_symlinks: bool,
                ) -> tuple[os.stat_result | None, str]:
    """(stat, "") for the file `root/rel`, or (None, why it cannot be probed): a name that cannot be stored,
    a missing file, a broken symlink, a symlink loop, or a path whose real location lies outside `root`
    (a real, resolved path ending in a separator) unless `follow_symlinks`. Each folder is resolved once
    (`real_dirs`, by its path relative to the root), so the symlink check costs one lstat per file."""
    problem = name_problem(rel)
    if problem:
        return None, problem
    folder, _, name = rel.rpartition("/")
    try:
        real_dir = real_dirs.get(folder)
        if real_dir is None:
            real_dir = real_dirs[folder] = os.path.join(os.path.realpath(root + folder, strict=True), "")
        real = real_dir + name
        st = os.lstat(real)  # one system call for a plain file
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(real, strict=True)
            st = os.stat(real)
    except FileNotFoundError:
        return None, "broken symlink" if os.path.islink(root + rel) else "missing file"
    except OSError as err:
        return None, "symlink loop" if err.errno == errno.ELOOP else f"cannot stat: {err.strerror}"
    if not follow_symlinks and not real.startswith(root):
        return None, OUTSIDE_ROOT
    return st, ""


def probe_all(root: Path, entries: list[Entry], cache_file: Path, workers: int, max_aspect: float,
              max_pixels: int, follow_symlinks: bool) -> tuple[list[ProbeResult], dict]:
    """Probe every entry (in parallel, reusing cached results for unchanged files probed under the same
    limits); returns the results in entry order and counts {"probed", "cached", "missing"} (missing: files
    or symlink targets that do not exist). Entries `_stat_entry` refuses are not probed. The cache is
    rewritten for the current files.

    A pool task is a chunk of paths and its result one list (one message each way, handled per chunk by
    the parent). Once two chunks are full the pool starts, and chunks go to it as the stat pass fills
    them, so that the workers decode while the parent stats the rest (at millions of files, seconds of
    serial work); fewer are probed in the parent. Chunks are sized from the entry count, the number to
    probe being known only at the end."""
    limits = _cache_limits(max_aspect, max_pixels)
    cache = _load_cache(cache_file, limits)
    probe = functools.partial(probe_chunk, max_aspect=max_aspect, max_pixels=max_pixels)
    size = max(1, min(256, len(entries) // (workers * 16)))
    results: list[ProbeResult | None] = [None] * len(entries)
    stats: dict[int, tuple[str, int, int]] = {}
    real_dirs: dict[str, str] = {}
    todo: list[int] = []  # the entries to probe, in order; chunk k is todo[k * size:(k + 1) * size]
    sent: list[AsyncResult] = []  # the pending result of each chunk sent to the pool, in order
    missing = 0
    root_dir = os.path.join(root, "")

    def chunk(k: int) -> list[str]:
        return [stats[i][0] for i in todo[k * size:(k + 1) * size]]

    with contextlib.ExitStack() as stack:
        pool = None
        for i, e in enumerate(entries):
            st, reason = _stat_entry(root_dir, e.path, real_dirs, follow_symlinks)
            if st is None:
                results[i] = failed(reason)
                missing += reason in ("missing file", "broken symlink")
                continue
            path = root_dir + e.path
            stats[i] = (path, st.st_size, st.st_mtime_ns)
            hit = cache.get(path)
            if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
                results[i] = hit[2]
                continue
            todo.append(i)
            if workers > 1 and len(todo) % size == 0 and len(todo) >= 2 * size:  # two chunks full: worth a pool
                if pool is None:
                    pool = stack.enter_context(worker_pool(workers))
                sent += [pool.apply_async(probe, (chunk(k),)) for k in range(len(sent), len(todo) // size)]
        chunks = -(-len(todo) // size)
        if pool is None:  # fewer than two chunks, or one worker
            probed = (probe(chunk(k)) for k in range(chunks))
        else:
            sent += [pool.apply_async(probe, (chunk(k),)) for k in range(len(sent), chunks)]
            probed = (pending.get() for pending in sent)
        with tqdm(total=len(todo), desc="probe", unit="img", disable=not todo) as bar:
            for k, chunk_results in enumerate(probed):
                for i, result in zip(todo[k * size:(k + 1) * size], chunk_results):
                    results[i] = result
                bar.update(len(chunk_results))

    rows = [(*stats[i], *results[i]) for i in stats]  # entry order: stats was filled in it
    table = pa.table(list(zip(*rows)) or [[] for _ in _CACHE_SCHEMA], schema=_CACHE_SCHEMA.with_metadata(limits))
    atomic_write(cache_file, lambda tmp: pq.write_table(table, tmp))
    counts = {"probed": len(todo), "cached": len(stats) - len(todo), "missing": missing}
    return results, counts  # type: ignore[return-value]


def hold_out(entries: list[Entry], fraction: float, seed: int) -> list[Entry]:
    """Move a stratified `fraction` of each class's train entries to val (rounded, at least one left in
    train), chosen by (seed, class id) so a class's choice does not depend on the other classes."""
    by_class: dict[str, list[int]] = collections.defaultdict(list)
    for i, e in enumerate(entries):
        if e.split == "train":
            by_class[e.class_id].append(i)
    moved = set()
    for class_id, rows in by_class.items():
        n_val = min(len(rows) - 1, int(np.floor(fraction * len(rows) + 0.5)))
        rng = np.random.default_rng([seed, zlib.crc32(class_id.encode())])
        moved.update(rows[j] for j in rng.permutation(len(rows))[:n_val])
    return [Entry(e.path, e.image_id, e.class_id, "val") if i in moved else e for i, e in enumerate(entries)]


def plot_class_sizes(sizes: np.ndarray, file: Path, title: str) -> Figure:
    """The training-class sizes as a rank-size line (sorted, log axes: one line, readable at 50,030 classes;
    up to `FEW_CLASSES` classes a linear rank axis with a marker per class) and their histogram in log bins;
    classes without training images cannot sit on a log axis and are counted in the title instead. Headless
    Agg rendering; returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84, wspace=0.22)  # fixed: a layout engine costs ~0.3 s
    ranked, hist = fig.subplots(1, 2)
    positive = np.sort(sizes[sizes > 0])[::-1]
    few = len(positive) <= FEW_CLASSES
    ranked.plot(np.arange(1, len(positive) + 1), positive, lw=1.5, marker="o" if few else None, ms=4)
    ranked.set(xscale="linear" if few else "log", yscale="log", xlabel="class rank", ylabel="training images",
               title="class sizes, sorted")
    bins = np.geomspace(1, max(2, positive[0] if positive.size else 2) + 1, 30)
    hist.hist(positive, bins=bins)
    hist.set(xscale="log", yscale="linear" if few else "log", xlabel="training images per class", ylabel="classes",
             title="histogram")
    if few:  # whole ranks and counts; sizes as plain numbers, the minor ticks labelled over a short range only
        for axis in (ranked.xaxis, hist.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        for axis in (ranked.yaxis, hist.xaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    empty = int((sizes == 0).sum())
    fig.suptitle(title + (f" ({empty} without training images, not shown)" if empty else ""))
    fig.savefig(file, dpi=100)
    return fig


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cycle collector (reference counting still frees every object as before). Indexing
    holds a few objects per image (entries, stats, results) and makes no reference cycles, yet each
    collection of the oldest generation rescans all of them: a quarter of the parent's time at 100,000
    images. Collection resumes afterwards as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_cyclic_gc_paused()
def prepare(root: str | Path, out: str | Path, *, workers: int | None = None, val_fraction: float = 0.0, seed: int = 0,
            max_aspect: float = MAX_ASPECT, max_pixels: int = MAX_PIXELS, follow_symlinks: bool = False) -> Manifest:
    """Index, probe and quarantine the dataset at `root` and write the prepared dataset to `out`."""
    root, out = Path(root).resolve(), Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be in [0, 1) (got {val_fraction})")
    if not 1.0 <= max_aspect < math.inf:
        raise DatasetError(f"--max-aspect must be a finite number >= 1 (got {max_aspect})")
    if max_pixels < 1:
        raise DatasetError(f"--max-pixels must be >= 1 (got {max_pixels})")
    entries, layout, ignored = discover(root)
    if not entries:
        raise DatasetError(f"{root}: no images found (expected train.json, or <class>/<image> folders)")
    out.mkdir(parents=True, exist_ok=True)
    results, counts = probe_all(root, entries, out / PROBE_CACHE, max(1, workers or os.cpu_count() or 1),
                                max_aspect, max_pixels, follow_symlinks)

    good = [(e, r) for e, r in zip(entries, results) if not r[4]]
    quarantine = [{"path": escape_name(e.path), "split": e.split, "class_id": escape_name(e.class_id), "reason": r[4]}
                  for e, r in zip(entries, results) if r[4]]
    if val_fraction > 0:
        if any(e.split == "val" for e in entries):
            raise DatasetError(f"{root} already has a val split; --val-fraction is for datasets without one")
        kept = hold_out([e for e, _ in good], val_fraction, seed)
        good = [(e, r) for e, (_, r) in zip(kept, good)]
    if not good:
        write_quarantine(out, quarantine)
        common = collections.Counter(q["reason"] for q in quarantine).most_common(1)[0][0]
        raise DatasetError(f"{root}: all {len(entries)} images are unreadable (most often: {common}; "
                           f"see {out / 'quarantine.csv'})")

    # every class listed, even one whose images were all quarantined, except names that cannot be stored
    class_ids = sorted(c for c in {e.class_id for e in entries if e.split in ("train", "val")} if not name_problem(c))
    index = {c: i for i, c in enumerate(class_ids)}
    columns = {
        "path": [e.path for e, _ in good], "image_id": [e.image_id for e, _ in good],
        "label": [index.get(e.class_id, -1) for e, _ in good], "class_id": [e.class_id for e, _ in good],
        "split": [e.split for e, _ in good], "width": [r[0] for _, r in good], "height": [r[1] for _, r in good],
        "format": [r[2] for _, r in good],
    }
    train_counts = collections.Counter(e.class_id for e, _ in good if e.split == "train")
    sizes = np.array([train_counts.get(c, 0) for c in class_ids], dtype=np.int64)
    summary = {
        "root": str(root), "layout": layout, "classes": len(class_ids),
        "images": dict(sorted(collections.Counter(e.split for e, _ in good).items())),
        "class_size": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())} if sizes.size else {},
        "classes_without_train_images": int((sizes == 0).sum()),
        "quarantined": {"total": len(quarantine), "by_reason": dict(collections.Counter(q["reason"] for q in quarantine).most_common())},
        "formats": dict(collections.Counter(f"{r[2]}/{r[3]}" for _, r in good).most_common()),
        "probe": counts, "ignored_files": ignored, "val_fraction": val_fraction, "seed": seed,
        "max_aspect": float(max_aspect), "max_pixels": int(max_pixels), "follow_symlinks": follow_symlinks,
    }
    manifest = Manifest.write(out, root=root, class_ids=class_ids, columns=columns, quarantine=quarantine, summary=summary)
    if sizes.size:
        plot_class_sizes(sizes, out / CLASS_SIZES_PLOT, f"{root.name}: {len(class_ids)} classes, {int(sizes.sum())} training images")
    return manifest


def describe(summary: dict) -> str:
    """A short human summary of summary.json."""
    images = ", ".join(f"{n} {split}" for split, n in summary["images"].items())
    size = summary["class_size"]
    lines = [
        f"{summary['layout']} dataset at {summary['root']}: {images} images, {summary['classes']} classes",
        f"train class sizes: min {size.get('min')}, median {size.get('median')}, max {size.get('max')}"
        + (f" ({summary['classes_without_train_images']} classes without training images)" if summary["classes_without_train_images"] else ""),
        f"probed {summary['probe']['probed']} files, {summary['probe']['cached']} from the cache",
        f"quarantined {summary['quarantined']['total']}: "
        + (", ".join(f"{n} {reason}" for reason, n in summary["quarantined"]["by_reason"].items()) or "none"),
        "formats: " + ", ".join(f"{n} {fmt}" for fmt, n in summary["formats"].items()),
    ]
    if summary["ignored_files"]:
        lines.append(f"ignored {summary['ignored_files']} non-image files")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    try:
        manifest = prepare(args.root, args.out, workers=args.workers, val_fraction=args.val_fraction, seed=args.seed,
                           max_aspect=args.max_aspect, max_pixels=args.max_pixels,
                           follow_symlinks=args.follow_symlinks)
    except DatasetError as err:
        print(f"fastprod prepare: error: {err}", file=sys.stderr)
        return 2
    print(describe(json.loads((manifest.directory / "summary.json").read_text())))
    print(f"wrote {manifest.directory}")
    return 0


def register(subparsers) -> None:
    """Add `fastprod prepare ROOT --out DIR ...`."""
    p = subparsers.add_parser("prepare", help="index, probe and quarantine a dataset; write the manifest")
    p.add_argument("root", type=Path, help="AliProducts root (train.json, val.json) or a folder tree of classes")
    p.add_argument("--out", type=Path, required=True, help="directory for the manifest, quarantine list and summary")
    p.add_argument("--workers", type=int, default=None, help="probe processes (default: all cores)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this stratified fraction of train as val")
    p.add_argument("--seed", type=int, default=0, help="seed for --val-fraction")
    p.add_argument("--max-aspect", type=float, default=MAX_ASPECT,
                   help=f"quarantine images whose long side exceeds this many times the short side (default {MAX_ASPECT:g})")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"quarantine images with more pixels than this (default {MAX_PIXELS:,})")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="accept symlinks to files outside ROOT (by default they are quarantined)")
    p.set_defaults(func=_run)
