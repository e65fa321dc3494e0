"""The prepared dataset: the one place that reads and writes what `fastprod prepare` produces.

Dataset ingestion indexes the raw images once, quarantines the unreadable ones and fixes the class
mapping; training, evaluation and the noise-cleaning stages only ever see this directory:

    DIR/manifest.parquet  path (relative to root), image_id, label (int32, -1 when unlabelled),
                          class_id, split (train/val/test), width, height, format
    DIR/classes.json      {"root": "<absolute root>", "root_relative": "<root relative to DIR>",
                          "class_ids": [...]}; label i <-> class_ids[i]. When the absolute root is gone,
                          the relative one is used, so a dataset moved together with its prepared copy
                          still loads; `check_images` refuses a root that is moved or not mounted.
    DIR/quarantine.csv    path, split, class_id, reason: files excluded from the manifest
    DIR/summary.json      counts per split, class sizes, quarantine reasons, formats
    DIR/class_sizes.png   the class-size distribution (written by prepare)

In RAM a loaded manifest with its split views holds ~140 bytes per image (measured at 1M rows, 50,030
classes: the Arrow table ~85, the views' Arrow path and image-id columns ~45, NumPy int64 labels 8);
no Python object per image. pyarrow and numpy only: no pandas.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fastprod.files import atomic_write, write_json

MANIFEST = "manifest.parquet"
CLASSES = "classes.json"
QUARANTINE = "quarantine.csv"
SUMMARY = "summary.json"
CLASS_SIZES_PLOT = "class_sizes.png"

SCHEMA = pa.schema([
    ("path", pa.string()), ("image_id", pa.string()), ("label", pa.int32()), ("class_id", pa.string()),
    ("split", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()),
])
QUARANTINE_COLUMNS = ("path", "split", "class_id", "reason")


class DatasetError(ValueError):
    """A raw dataset or prepared manifest that cannot be used; the message names the file and the problem."""


class Strings(Sequence[str]):
    """A column of strings kept in one Arrow array, `prefix` + value made a Python str only when read: a
    few bytes a row and no Python object per image (3M paths as a list of str are ~0.4 GB, and every
    forked loader worker touching their reference counts copies them). An index gives a str, a slice a list."""

    _BATCH = 1 << 16  # rows converted at a time while iterating

    def __init__(self, array: pa.Array | pa.ChunkedArray, prefix: str = "") -> None:
        self.array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.prefix + s for s in self.array.take(np.arange(len(self))[index]).to_pylist()]
        return self.prefix + self.array[index].as_py()

    def __iter__(self) -> Iterator[str]:
        for lo in range(0, len(self), self._BATCH):
            yield from (self.prefix + s for s in self.array.slice(lo, self._BATCH).to_pylist())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, Strings)) else NotImplemented

    __hash__ = None


def class_members(labels: np.ndarray) -> list[np.ndarray]:
    """The indices of each class's samples, ascending, classes in increasing order: `np.flatnonzero(labels == c)`
    for each c of `np.unique(labels)`, from one stable sort (O(N log N), not O(N x C): at 3M images of 50,030
    classes, seconds against minutes). The per-class draws of cleaning and of the ensemble's holdout."""
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, starts) if len(labels) else []


@dataclass(frozen=True)
class SplitView:
    """The rows of one split, in manifest order, as the loaders consume them. A loaded manifest's views
    hold `Strings` (Arrow) columns; any sequence of str will do for a view built by hand."""

    name: str
    paths: Sequence[str]  # absolute
    labels: np.ndarray  # int64, -1 for unlabelled (test) rows
    image_ids: Sequence[str]

    def __len__(self) -> int:
        return len(self.paths)


class Manifest:
    """A prepared dataset: the image table, the class mapping and the dataset root."""

    def __init__(self, directory: Path, root: Path, class_ids: list[str], table: pa.Table) -> None:
        self.directory, self.root, self.class_ids, self.table = directory, root, class_ids, table
        self._views: dict[str, SplitView] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def splits(self) -> list[str]:
        return sorted(pc.unique(self.table["split"]).to_pylist())

    def __len__(self) -> int:
        return self.table.num_rows

    def split(self, name: str) -> SplitView:
        """The rows of split `name`; a split with no rows is an error naming it and the directory."""
        if name not in self._views:
            rows = self.table.filter(pc.equal(self.table["split"], name))
            if rows.num_rows == 0:
                raise DatasetError(
                    f"split {name!r} has no images in the manifest at {self.directory} "
                    f"(splits present: {', '.join(self.splits) or 'none'})"
                )
            self._views[name] = SplitView(
                name=name,
                paths=Strings(rows["path"], os.path.join(str(self.root), "")),
                labels=rows["label"].to_numpy().astype(np.int64),
                image_ids=Strings(rows["image_id"]),
            )
        return self._views[name]

    def check_images(self, split: str, sample: int = 64) -> None:
        """Refuse a split whose images are not where the manifest says: the root was moved or is not
        mounted (an empty mount point included). Checks up to `sample` files spread over the split."""
        if not self.root.is_dir():
            raise DatasetError(f"the image root {self.root} of the prepared dataset {self.directory} does not exist "
                               f"(moved, or not mounted?); mount it, or re-run `fastprod prepare` on its new location")
        paths = self.split(split).paths
        probe = paths[:: max(1, len(paths) // sample)][:sample]
        if not any(os.path.isfile(p) for p in probe):
            raise DatasetError(f"none of {len(probe)} sampled {split} images of {self.directory} exists under the image "
                               f"root {self.root} (e.g. {probe[0]}): moved, or not mounted? re-run `fastprod prepare` "
                               f"on the images' current location")

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """Read a directory written by `fastprod prepare`; a missing or damaged file is a `DatasetError`."""
        directory = Path(directory)
        if not directory.is_dir():
            raise DatasetError(f"manifest directory {directory} does not exist (run `fastprod prepare ROOT --out {directory}`)")
        classes_file, manifest_file = directory / CLASSES, directory / MANIFEST
        try:
            classes = json.loads(classes_file.read_text())
            root, class_ids = Path(classes["root"]), list(classes["class_ids"])
            if not root.is_dir() and isinstance(classes.get("root_relative"), str):
                moved = (directory / classes["root_relative"]).resolve()
                root = moved if moved.is_dir() else root
        except FileNotFoundError:
            raise DatasetError(f"{classes_file} is missing (run `fastprod prepare ROOT --out {directory}`)") from None
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{classes_file} is corrupt: {type(err).__name__}: {err}") from None
        if not all(isinstance(c, str) for c in class_ids):
            raise DatasetError(f"{classes_file}: class_ids must be strings")
        try:
            table = pq.read_table(manifest_file)
        except FileNotFoundError:
            raise DatasetError(f"{manifest_file} is missing (run `fastprod prepare ROOT --out {directory}`)") from None
        except (pa.ArrowException, OSError) as err:
            raise DatasetError(f"{manifest_file} is corrupt: {err}") from None
        missing = [f.name for f in SCHEMA if f.name not in table.column_names]
        if missing:
            raise DatasetError(f"{manifest_file} lacks columns {missing}")
        try:
            table = table.select(SCHEMA.names).cast(SCHEMA)
        except (pa.ArrowException, ValueError) as err:
            raise DatasetError(f"{manifest_file} has wrong column types: {err}") from None
        labels = table["label"]
        if table.num_rows and (pc.min(labels).as_py() < -1 or pc.max(labels).as_py() >= len(class_ids)):
            raise DatasetError(f"{manifest_file}: labels outside [-1, {len(class_ids)}) for the {len(class_ids)} classes in {classes_file}")
        return cls(directory, root, class_ids, table)

    @classmethod
    def write(
        cls, directory: str | Path, *, root: Path, class_ids: list[str], columns: dict[str, list],
        quarantine: Iterable[dict], summary: dict,
    ) -> Manifest:
        """Write manifest.parquet, classes.json, quarantine.csv and summary.json; return the manifest.

        `columns` maps every column of `SCHEMA` to a list of values (one per kept image);
        `quarantine` yields dicts with the keys of `QUARANTINE_COLUMNS`.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        table = pa.table({name: columns[name] for name in SCHEMA.names}, schema=SCHEMA)
        atomic_write(directory / MANIFEST, lambda tmp: pq.write_table(table, tmp))
        root = Path(root).resolve()
        write_json(directory / CLASSES, {"root": str(root), "root_relative": os.path.relpath(root, directory.resolve()),
                                         "class_ids": list(class_ids)})
        write_quarantine(directory, quarantine)
        write_json(directory / SUMMARY, summary)
        return cls.load(directory)

    def subset(self, directory: str | Path, keep: np.ndarray, note: str) -> Manifest:
        """A prepared dataset at `directory` holding the rows where `keep` (one bool per manifest row)
        is true, with the same root and class mapping (labels keep their meaning)."""
        rows = self.table.filter(pa.array(np.asarray(keep, dtype=bool)))
        splits = rows["split"].to_pylist()
        summary = {"derived_from": str(self.directory), "note": note,
                   "images": {s: splits.count(s) for s in sorted(set(splits))}}
        return Manifest.write(directory, root=self.root, class_ids=self.class_ids, columns=rows.to_pydict(),
                              quarantine=read_quarantine(self.directory), summary=summary)


def write_quarantine(directory: str | Path, rows: Iterable[dict]) -> None:
    """Write DIR/quarantine.csv atomically; `rows` are dicts with the keys of `QUARANTINE_COLUMNS`."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=QUARANTINE_COLUMNS)
            writer.writeheader()
            writer.writerows({k: row[k] for k in QUARANTINE_COLUMNS} for row in rows)

    atomic_write(Path(directory) / QUARANTINE, write)


def read_quarantine(directory: str | Path) -> list[dict[str, str]]:
    """The rows of DIR/quarantine.csv (path, split, class_id, reason)."""
    with open(Path(directory) / QUARANTINE, newline="") as f:
        return list(csv.DictReader(f))
