"""`bash bench/run.sh --quick` (the profiling entry point) writes a well-formed result file, log and
plot per benchmark and a report that shows them all."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

ROOT = Path(__file__).resolve().parents[2]


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
