"""bench/scale.py, the cost-against-size bench of issue 15: its least-squares exponent and projection against a
closed-form power law, and the bench itself at a tiny size (503 classes, 1,000 and 2,000 images): every stage
measured in its own process, none failed, a finite exponent each, and a stated bound on peak memory."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# peak RSS of any stage at the smallest tiny size: the interpreter with torch, timm and DeepSpeed imported
# (~0.7-0.9 GiB here) plus the stage's own data, a few MB at this size (resnet50's 503-class weights: 0.1 GB)
PEAK_RSS_BOUND_MB = 1536


def _scale_module():
    spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_exponent_recovers_a_power_law():
    scale = _scale_module()
    sizes = [1000, 4000, 16000, 64000]
    e, projected = scale.fit_exponent(sizes, [3.0 * n**1.5 for n in sizes])
    assert e == pytest.approx(1.5, rel=1e-9)
    assert projected == pytest.approx(3.0 * scale.FULL_TRAIN**1.5, rel=1e-9)
    assert scale.fit_exponent(sizes, [None, 2.0, None, None]) == (None, None)  # one point fits nothing
    assert scale.fit_exponent(sizes, [1.0, 2.0, 4.0, 3.0], size_free=True)[1] == 2.5  # the median


@pytest.mark.e2e  # launches a process per stage and size
def test_scale_bench_tiny_measures_every_stage(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/scale.py", "--classes", "503", "--sizes", "1000", "2000", "--steps", "1",
         "--workers", "2", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "scale.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "scale.json").read_text())
    rows = {r["stage"]: r for r in result["rows"]}
    scale = _scale_module()
    trains = {f"train_{i}_d{w}_c{c}" for i in scale.IMPLS for w in scale.WIDTHS for c in (scale.BASE_CLASSES, 503)}
    assert set(rows) == set(scale.STAGES) - {"train"} | trains
    for name, r in rows.items():
        assert not r["errors"], name
        assert r["seconds_N1000"] > 0 and r["seconds_N2000"] > 0, name
        assert math.isfinite(r["time_exponent"]) and math.isfinite(r["rss_exponent"]), name
        assert 0 < r["peak_rss_mb_N1000"] < PEAK_RSS_BOUND_MB, name
    assert rows["synth"]["bytes_N2000"] > rows["synth"]["bytes_N1000"] > 1000 * 100  # tiny JPEGs: > 100 B each
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"
