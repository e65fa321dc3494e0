"""Atomic file writes: the one helper every stage uses so that a reader (or a resumed run) never sees half a
file. A write goes to a temporary sibling, which is renamed over the target only once it is complete; a
failed write removes its temporary and leaves the previous file as it was."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


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
