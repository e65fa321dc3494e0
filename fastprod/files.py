"""Atomic file writes: the one helper every stage uses so that a reader (or a resumed run) never sees half a
file. A write goes to a temporary sibling, which is renamed over the target only once it is complete; a
failed write removes its temporary and leaves the previous file as it was. And `release_rows`, which keeps a
streamed memory map's resident memory at one chunk."""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` to fill a temporary sibling of `path`, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: object, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def release_rows(array: np.memmap, lo: int, hi: int) -> None:
    """Drop rows [lo, hi) of a memory-mapped [N, ...] array from this process's resident memory once a chunked
    reader or writer is done with them (madvise MADV_DONTNEED on the shared file mapping: the pages stay in the
    OS page cache, written back when dirty, and a later access maps them again). Without it every page a stream
    touches stays resident, so a pass over [150k, 50,030] float16 scores grows the process by 15 GB; with it the
    process holds one chunk. A no-op where the OS or the array (not a file mapping) does not allow it."""
    m = getattr(array, "_mmap", None)
    if m is None or not hasattr(m, "madvise") or hi <= lo:
        return
    row = array.strides[0]
    base = np.frombuffer(m, dtype=np.uint8).ctypes.data  # the mapping's first byte
    start = array.ctypes.data - base + lo * row
    first = start - start % mmap.PAGESIZE
    end = min(len(m), start + (hi - lo) * row)
    m.madvise(mmap.MADV_DONTNEED, first, end - first)
