"""What every augmentation module builds on (seed sections 1-2: augmentations).

- Per-sample randomness: `sample_seed(seed, epoch, index)` seeds a Mersenne Twister (numpy's
  `RandomState` in Python, `np.random.seed` inside numba: the same generator and seeding) and each
  sample's vector of uniforms is drawn from it. Each augmentation module declares the uniforms it
  takes (`UNIFORMS`, name -> count); `place_uniforms` lays the modules' declarations out one after
  another in registration order and sets each module's `FIRST`, so no slot map is kept by hand.
- `@compiled`: a plain-Python function (numpy scalars and arrays, no BLAS, no numpy RNG objects) that
  numba compiles as well; `jitted()` gives the compiled twins, which call each other's compiled
  versions. The DALI backend runs the Python functions, the FFCV backend their twins: both give the
  same parameters for the same sample, and a resumed run the same as an uninterrupted one.
- `DALIGraph`: what an augmentation's DALI implementation builds its part of the graph with.
- Shared numeric helpers (`randint`, `round_half_up`, `matmul3`).
"""

from __future__ import annotations

import functools
import math
from types import FunctionType, ModuleType
from typing import Any, NamedTuple

import numpy as np

_M32 = 1 << 32
_MARKED: list[tuple[FunctionType, dict]] = []  # (function, njit options) of every @compiled function


def compiled(function: FunctionType | None = None, **options):
    """Mark a function that numba compiles too (`jitted()`), with njit `options` (default: none)."""
    def mark(f: FunctionType) -> FunctionType:
        _MARKED.append((f, options))
        return f

    return mark(function) if function is not None else mark


@functools.lru_cache(maxsize=None)
def jitted() -> dict:
    """{function: its numba-compiled twin} for every `@compiled` function, one set per process (every
    FFCV loader reuses the compiled code). A twin sees its module's globals as they are now, with the
    `@compiled` functions replaced by their twins."""
    from numba import njit

    spaces: dict[str, dict] = {}
    twins: dict = {}
    for f, options in _MARKED:
        space = spaces.setdefault(f.__module__, dict(f.__globals__))
        twins[f] = njit(**options)(FunctionType(f.__code__, space, f.__name__, f.__defaults__))
    for space in spaces.values():
        for name, value in space.items():
            if isinstance(value, FunctionType) and value in twins:
                space[name] = twins[value]
    return twins


def place_uniforms(modules: tuple[ModuleType, ...]) -> int:
    """Give each module's declared uniforms their place in the sample's vector, in registration order
    (sets `module.FIRST`); returns the vector's length. A module added at the end moves no one's draws."""
    first = 0
    for module in modules:
        module.FIRST = first
        first += sum(module.UNIFORMS.values())
    return first


def offsets(declared: dict[str, int]) -> tuple[int, ...]:
    """Where each declared group of uniforms starts, relative to the module's `FIRST`."""
    starts, at = [], 0
    for count in declared.values():
        starts.append(at)
        at += count
    return tuple(starts)


@compiled
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for (seed, epoch, index); integer arithmetic identical in Python and numba."""
    s = (seed % _M32) * 1_000_003 % _M32
    s = (s + epoch % _M32) * 10_000_019 % _M32
    return (s + index % _M32 + 0x9E3779B9) % _M32


@compiled
def randint(u: float, n: int) -> int:
    """An integer in [0, n) from a uniform."""
    return min(int(math.floor(u * n)), n - 1)


@compiled
def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@compiled
def matmul3(a, b):
    c = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            for k in range(3):
                c[i, j] += a[i, k] * b[k, j]
    return c


class DALIGraph(NamedTuple):
    """What an augmentation's `dali_apply` builds with: DALI's `fn` and `types` modules, the output
    size, and whether the pipeline runs on the GPU."""

    fn: Any
    types: Any
    size: int
    gpu: bool
