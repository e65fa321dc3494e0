"""`bash bench/run.sh --quick` (the profiling entry point) writes a well-formed result file, log and
plot per benchmark and a report that shows them all; its scale bench (503 classes, 1,000 and 2,000 images)
measures every stage in its own process, none failing, a finite exponent each, under a stated peak memory."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from test_bench_scale import scale_module

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

ROOT = Path(__file__).resolve().parents[2]
# peak RSS of any scale stage at the smallest quick size: the interpreter with torch, timm and DeepSpeed imported
# (~0.7-0.9 GiB here) plus the stage's own data, a few MB at this size (resnet50's 503-class weights: 0.1 GB)
PEAK_RSS_BOUND_MB = 1536


def test_run_sh_quick_writes_every_result(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(["bash", "bench/run.sh", "--quick", "--cpu", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    expected = {"kernels_cpu", "profile_step", "ensemble", "loader", "prepare_speed", "train_throughput", "scale"}
    assert expected <= {r["bench"] for r in results}
    report = (out / "report.md").read_text()
    for r in results:
        assert r["hardware"] and r["baseline"] and r["rows"], r["bench"]
        assert all(set(row) == set(r["rows"][0]) for row in r["rows"])
        assert f"## {r['bench']}:" in report and (out / f"{r['bench']}.log").stat().st_size > 0
        assert (out / f"{r['bench']}.png").read_bytes()[:4] == b"\x89PNG"
    profile = next(r for r in results if r["bench"] == "profile_step")["rows"][0]
    assert profile["img_per_s"] > 0 and 0 < profile["mfu"] < 1 and profile["forward_ms"] > 0
    assert Path(profile["trace"]).stat().st_size > 0
    rows = {r["stage"]: r for r in next(r for r in results if r["bench"] == "scale")["rows"]}
    scale = scale_module()
    trains = {f"train_{i}_d{w}_c{c}" for i in scale.IMPLS for w in scale.WIDTHS for c in (scale.BASE_CLASSES, 503)}
    assert set(rows) == set(scale.STAGES) - {"train"} | trains
    for name, r in rows.items():
        assert not r["errors"], name
        assert r["seconds_N1000"] > 0 and r["seconds_N2000"] > 0, name
        assert math.isfinite(r["time_exponent"]) and math.isfinite(r["rss_exponent"]), name
        assert 0 < r["peak_rss_mb_N1000"] < PEAK_RSS_BOUND_MB, name
    assert rows["synth"]["bytes_N2000"] > rows["synth"]["bytes_N1000"] > 1000 * 100  # tiny JPEGs: > 100 B each
