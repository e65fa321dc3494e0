"""bench/scale.py, the cost-against-size bench: its least-squares exponent and projection against a closed-form
power law (the bench itself runs at a tiny size in tests/project/test_bench.py, as `bench/run.sh --quick` runs
it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
def scale_module():
    spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_exponent_recovers_a_power_law():
    scale = scale_module()
    sizes = [1000, 4000, 16000, 64000]
    e, projected = scale.fit_exponent(sizes, [3.0 * n**1.5 for n in sizes])
    assert e == pytest.approx(1.5, rel=1e-9)
    assert projected == pytest.approx(3.0 * scale.FULL_TRAIN**1.5, rel=1e-9)
    assert scale.fit_exponent(sizes, [None, 2.0, None, None]) == (None, None)  # one point fits nothing
    assert scale.fit_exponent(sizes, [1.0, 2.0, 4.0, 3.0], size_free=True)[1] == 2.5  # the median
