"""`fastprod write-ffcv MANIFEST`: write each split of a prepared dataset as an FFCV .beton.

One file per split, `<out>/<split>.beton` (default out: MANIFEST/ffcv, where `data.backend: ffcv`
looks), rows in manifest order so that row i is sample index i of the split. Fields: `image`
(RGBImageField: longest side capped at --max-resolution, stored as JPEG at --jpeg-quality, or raw
with --write-mode raw), `label` (-1 when unlabelled), `index` (the sample index, checked by the
loader) and `ok` (0 for a file that could not be decoded, or that `load_rgb` refuses before decoding
for its aspect ratio or pixel count: stored as a placeholder, dropped and quarantined by the loader).
Images are decoded with `images.load_rgb`, as the PIL backend does.
A sidecar `<split>.beton.json` records the split's size and a hash of its paths; the loader refuses
a .beton written for other rows. A progress bar per split (FFCV's, labelled with the split's name;
`--no-progress`: none).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastprod.data.augment import MEAN_UINT8
from fastprod.data.images import ImageError, load_rgb
from fastprod.data.manifest import DatasetError, Manifest, SplitView
from fastprod.files import atomic_write


def paths_digest(split: SplitView) -> str:
    h = hashlib.sha1()
    for p in split.paths:
        h.update(p.encode() + b"\0")
    return h.hexdigest()


class _Rows:
    """The indexable dataset FFCV's writer reads: (image HWC uint8, label, index, ok)."""

    def __init__(self, split: SplitView) -> None:
        self.paths, self.labels = split.paths, split.labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image, ok = np.asarray(load_rgb(self.paths[i])), 1
        except (ImageError, OSError):
            image, ok = np.full((8, 8, 3), MEAN_UINT8, dtype=np.uint8), 0
        return image, int(self.labels[i]), i, ok


def write_beton(
    split: SplitView, path: str | Path, *, max_resolution: int = 512, jpeg_quality: int = 90,
    write_mode: str = "jpg", workers: int = -1, progress: bool = True,
) -> Path:
    """Write `split` to `path` (and `path`.json); returns the path."""
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality),
        "label": IntField(), "index": IntField(), "ok": IntField(),
    }
    rows = _Rows(split)
    ffcv_bar = ffcv.writer.tqdm  # the writer draws its own bar over the samples its workers report done,
    # unlabelled and always on: labelled here like fastprod's bars, and off with `progress` False
    ffcv.writer.tqdm = partial(tqdm, desc=split.name, unit="img", dynamic_ncols=True, disable=not progress)
    try:
        atomic_write(path, lambda tmp: DatasetWriter(str(tmp), fields, num_workers=workers).from_indexed_dataset(
            rows, chunksize=64))
    finally:
        ffcv.writer.tqdm = ffcv_bar
    meta = {"split": split.name, "images": len(split), "paths_sha1": paths_digest(split),
            "max_resolution": max_resolution, "jpeg_quality": jpeg_quality, "write_mode": write_mode,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def check_beton(path: Path, split: SplitView) -> None:
    """Raise a `DatasetError` unless `path` was written for exactly the rows of `split`."""
    hint = f"run `fastprod write-ffcv MANIFEST --splits {split.name}` (or set data.ffcv_dir)"
    meta_file = Path(f"{path}.json")
    if not path.is_file() or not meta_file.is_file():
        raise DatasetError(f"data.backend=ffcv: {path} (and its .json) not found; {hint}")
    meta = json.loads(meta_file.read_text())
    if meta.get("images") != len(split) or meta.get("paths_sha1") != paths_digest(split):
        raise DatasetError(f"{path} was written for other rows than split {split.name!r} of the manifest; {hint}")


def _run(args: argparse.Namespace) -> int:
    manifest = Manifest.load(args.manifest)
    out = args.out or manifest.directory / "ffcv"
    for name in args.splits or [s for s in manifest.splits if s in ("train", "val")]:
        try:
            split = manifest.split(name)
        except DatasetError as err:
            print(f"write-ffcv: {err}")
            return 2
        path = write_beton(split, out / f"{name}.beton", max_resolution=args.max_resolution,
                           jpeg_quality=args.jpeg_quality, write_mode=args.write_mode, workers=args.workers,
                           progress=not args.no_progress)
        print(f"{name}: {len(split)} images -> {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("write-ffcv", help="write the prepared splits as FFCV .beton files (data.backend: ffcv)",
                              description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path, help="directory written by `fastprod prepare`")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: MANIFEST/ffcv)")
    p.add_argument("--splits", nargs="+", default=None, help="splits to write (default: train and val)")
    p.add_argument("--max-resolution", type=int, default=512, help="cap on the longest side, in pixels")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--write-mode", choices=("jpg", "raw", "smart", "proportion"), default="jpg")
    p.add_argument("--workers", type=int, default=-1, help="writer processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (on stderr)")
    p.set_defaults(func=_run)
