"""The LR range test on the tiny dataset, in-process (gloo, one rank): the exponential LR sequence,
the early stop on divergence, the files it writes, the suggestion rule, and that it leaves the
config's run directory alone."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fastprod.cli import main
from fastprod.config import load_config

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

TINY = """
data: {{manifest: {manifest}, image_size: 32, batch_size: 16, eval_batch_size: 64, workers: 0}}
model: {{name: resnet10t, drop_rate: 0.5, channels_last: true}}
optim: {{lr: 0.05, weight_decay: 3.0e-4}}
run: {{dir: {run_dir}, progress: false}}
"""


def write_config(tmp_path: Path, manifest_dir: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(manifest=manifest_dir, run_dir=tmp_path / "run"))
    return path


def read_curve(out: Path) -> list[dict]:
    with open(out / "lr_find.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def recompute_suggestion(rows: list[dict]) -> float:
    """The documented rule, independently: the steepest descent of the smoothed loss against
    log10(lr), among the finite points before the smoothed minimum (the first LR if that is first)."""
    points = [(r["lr"], r["smoothed_loss"]) for r in rows if math.isfinite(r["smoothed_loss"])]
    lrs, smooth = np.array(points).T
    best = int(np.argmin(smooth))
    if best == 0:
        return float(lrs[0])
    x = np.log10(lrs)
    slopes = [(smooth[1] - smooth[0]) / (x[1] - x[0])]
    slopes += [(smooth[i + 1] - smooth[i - 1]) / (x[i + 1] - x[i - 1]) for i in range(1, best)]
    return float(lrs[int(np.argmin(slopes))])


@pytest.fixture(scope="module")
def diverged(manifest_dir, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The CLI with the default --out, up to LR 1e3: the loss blows up well before the end."""
    tmp = tmp_path_factory.mktemp("lr_find_cli")
    config = write_config(tmp, manifest_dir)
    assert main(["lr-find", "--config", str(config), "--start", "1e-4", "--end", "1e3", "--epochs", "4"]) == 0
    out = tmp / "run-lr-find"
    return tmp, out, json.loads((out / "lr_find.json").read_text())


def test_divergence_stops_early_and_writes_only_to_out(diverged):
    tmp, out, summary = diverged
    rows = read_curve(out)
    assert summary["stopped_early"] and summary["steps"] == len(rows) < summary["planned_steps"] == 4 * 6
    last = rows[-1]
    best = min(r["smoothed_loss"] for r in rows[:-1])
    assert not math.isfinite(last["loss"]) or last["smoothed_loss"] > 4 * best
    assert all(math.isfinite(r["loss"]) and r["smoothed_loss"] <= 4 * best for r in rows[:-1])
    for name in ("lr_find.csv", "lr_find.png", "lr_find.json", "resolved.yaml"):
        assert (out / name).stat().st_size > 0
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "checkpoints").exists() and not (tmp / "run" / "checkpoints").exists()
    assert not (tmp / "run").exists()  # the config's run directory is not even created


def test_lr_sequence_is_exponential(diverged):
    _, out, summary = diverged
    total, start, end = summary["planned_steps"], summary["start"], summary["end"]
    lrs = [r["lr"] for r in read_curve(out)]
    expected = [math.exp(math.log(start) + i / (total - 1) * (math.log(end) - math.log(start))) for i in range(len(lrs))]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_suggestion_follows_the_rule(diverged):
    _, out, summary = diverged
    rows = read_curve(out)
    assert summary["suggested_lr"] == pytest.approx(recompute_suggestion(rows), rel=1e-12)
    assert summary["start"] <= summary["suggested_lr"] <= rows[-1]["lr"]
    finite = [r for r in rows if math.isfinite(r["smoothed_loss"])]
    at_min = min(finite, key=lambda r: r["smoothed_loss"])
    assert summary["min_loss_lr"] == at_min["lr"] and summary["min_loss_lr_div10"] == pytest.approx(at_min["lr"] / 10)


def test_full_range_without_divergence(manifest_dir, tmp_path):
    from fastprod.recipe.lr_find import lr_find
    from fastprod.train.distributed import init_distributed

    cfg = load_config(write_config(tmp_path, manifest_dir))
    summary = lr_find(cfg, init_distributed(), out=tmp_path / "out", start=1e-5, end=1e-2, epochs=2)
    lrs = [r["lr"] for r in read_curve(tmp_path / "out")]
    assert not summary["stopped_early"] and len(lrs) == summary["planned_steps"] == 12
    assert lrs[0] == pytest.approx(1e-5, rel=1e-12) and lrs[-1] == pytest.approx(1e-2, rel=1e-12)
    assert np.allclose(np.diff(np.log(lrs)), math.log(1e3) / 11, rtol=1e-9)
    assert 1e-5 <= summary["suggested_lr"] <= 1e-2
    assert summary["suggested_lr"] == pytest.approx(recompute_suggestion(read_curve(tmp_path / "out")), rel=1e-12)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra", [["--set", "optim.nope=1"], ["--start", "1", "--end", "0.1"]])
def test_bad_arguments_exit_2(manifest_dir, tmp_path, capsys, extra):
    assert main(["lr-find", "--config", str(write_config(tmp_path, manifest_dir)), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error:")
