"""The README's demo, worked example and scoring/ensemble commands run, exactly as written and in the
README's order, in a fresh directory: only the dataset is smaller (`fastprod synth` gets size flags) and
`configs/demo.yaml` is the real one with a smaller model, image size and schedule (and fp32: bf16 autocast
costs more than it saves on so small a model). The demo's batch of 32 is kept, so the balanced top-3 subset
of the 5 classes (15 images) is smaller than a batch, as on a user's small dataset: the finetune caps its batch
and inherits the trained run's settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from readme_commands import readme_sections, run_as_written, tiny_demo_config

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("What the demo does", "A worked example, end to end", "Scoring: TTA engines and ensembles")
TINY_DATA = "--classes 5 --train-images 100 --val-per-class 4 --size 48x48"
TINY_CONFIG = {"model.name": "resnet10t", "data.image_size": 32, "data.eval_batch_size": 32, "data.workers": 0,
               "schedule.epochs": 3, "run.progress": False, "run.precision": "fp32"}


def test_the_readme_sections_are_found():
    sections = readme_sections()
    for name in SECTIONS:
        assert sections.get(name), f"README: no bash commands under '{name}'"
    assert any(c.startswith("fastprod synth") for c in sections[SECTIONS[0]])


@pytest.mark.timeout(1500)
def test_readme_commands_run_as_written(tmp_path):
    shutil.copytree(ROOT / "launch", tmp_path / "launch")
    tiny_demo_config(tmp_path / "configs" / "demo.yaml", TINY_CONFIG)
    sections = readme_sections()
    outputs = {}
    for command in [c for name in SECTIONS for c in sections[name]]:
        outputs[command.split()[1]] = run_as_written(
            command + (" " + TINY_DATA if command.startswith("fastprod synth") else ""), tmp_path)

    # What the commands promise, checked against the files themselves.
    val = [r for r in pq.read_table(tmp_path / "data/demo-prepared/manifest.parquet").to_pylist() if r["split"] == "val"]
    for run in ("runs/demo", "runs/recipe", "runs/recipe-finetune"):
        assert (tmp_path / run / "final" / "model.pt").is_file() and (tmp_path / run / "summary.json").is_file()
    assert (tmp_path / "runs/demo-lr-find/lr_find.png").is_file()
    assert len(list((tmp_path / "runs/recipe/o2u").glob("cycle-*.csv"))) >= 1
    balanced = pq.read_table(tmp_path / "runs/recipe-clean/balanced-k3/manifest.parquet").to_pylist()
    train_sizes = np.bincount([r["label"] for r in balanced if r["split"] == "train"])
    assert train_sizes.tolist() == [3] * 5  # min(k, class size) of every class
    run, finetuned = (yaml.safe_load((tmp_path / f"runs/{name}/resolved.yaml").read_text())
                      for name in ("recipe", "recipe-finetune"))
    assert run["data"]["batch_size"] == 32 and run["loss"]["name"] == "sce" and run["o2u"]["enabled"]
    assert finetuned["data"]["batch_size"] == 15 and "data.batch_size 32 -> 15" in outputs["finetune"]
    assert finetuned["loss"] == run["loss"] and finetuned["o2u"] == run["o2u"]  # the run's settings, kept
    assert finetuned["model"] == {**run["model"], "init_from": "runs/recipe/final/model.pt"}
    assert finetuned["optim"] == {**run["optim"], "lr": pytest.approx(run["optim"]["lr"] / 10)}
    assert finetuned["schedule"]["epochs"] == 6  # finetune's default, chosen on the ladder
    assert len(json.loads((tmp_path / "engines/recipe/engine.json").read_text())["checkpoints"]) == 2  # 2 SGDR snapshots
    probs = {}
    for name in ("demo", "recipe", "finetune"):
        probs[name] = np.load(tmp_path / "preds" / name / "probs.npy").astype(np.float64)
        assert probs[name].shape[0] == len(val)
        np.testing.assert_allclose(probs[name].sum(1), 1.0, atol=5e-3)
    for name in ("folder", "demo-int8"):
        table = pq.read_table(tmp_path / "preds" / name / "predictions.parquet")
        assert table.num_rows == len(val) and all(table["ok"].to_pylist())
    assert json.loads((tmp_path / "engines/demo-int8/engine.json").read_text())["precision"] == "int8"
    average = pq.read_table(tmp_path / "preds/average/predictions.parquet").to_pylist()
    mean = sum(probs.values()) / 3  # the uniform ensemble, by numpy
    for row, p in zip(average, mean):
        assert row["topk_probs"][0] == pytest.approx(p.max(), abs=2e-3)
    summary = json.loads((tmp_path / "preds/ensemble/summary.json").read_text())
    assert summary["images"] == len(val) and 0 <= summary["top1_error"] <= 1
