"""The images a scoring run reads (seed section 5, multi-scale TTA and scoring: what gets scored or
calibrated on): ids, absolute paths and labels, from a prepared dataset's split or from image files
and folders. Imports nothing else of fastprod.score, so the engine, scoring and calibration can all
use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Items:
    image_ids: list[str]
    paths: list[str]
    labels: np.ndarray  # int64, -1 when unknown

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def of_split(cls, view) -> Items:
        """The rows of a manifest's `SplitView`."""
        return cls(list(view.image_ids), list(view.paths), view.labels.astype(np.int64))


def items_from_manifest(directory: str | Path, split: str) -> Items:
    from fastprod.data.manifest import Manifest

    return Items.of_split(Manifest.load(directory).split(split))


def items_from_paths(paths: list[str | Path]) -> Items:
    """Image files under each directory (recursively, sorted) or the files themselves; ids are relative paths,
    paths absolute (their folders resolved, as `fastprod prepare` resolves a dataset root)."""
    ids, files = [], []
    for entry in map(Path, paths):
        if entry.is_dir():
            folder = entry.resolve()
            found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            ids += [str(p.relative_to(folder)) for p in found]
            files += [str(p) for p in found]
        elif entry.exists():
            ids.append(entry.name)
            files.append(str(entry.parent.resolve() / entry.name))
        else:
            raise FileNotFoundError(f"--images: no such file or directory: {entry}")
    if not files:
        raise FileNotFoundError(f"--images: no image files under {[str(p) for p in paths]}")
    return Items(ids, files, np.full(len(files), -1, dtype=np.int64))
