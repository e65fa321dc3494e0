"""The finetune stage: the README's worked example runs as written on a user's dataset whose balanced
subset is smaller than a batch, inheriting the trained run's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from readme_commands import ROOT, readme_sections, run_as_written, tiny_demo_config

from fastprod.cli import main
from fastprod.data.manifest import Manifest

# 10 classes and the demo's batch of 32: the balanced top-3 subset has 30 images, less than a batch.
SMALL = {"model.name": "resnet10t", "data.image_size": 32, "data.eval_batch_size": 64, "data.workers": 0,
         "schedule.epochs": 2, "run.progress": False}
DATA = "--classes 10 --train-images 200 --val-per-class 2 --size 40x40"
STAGES = ("fastprod synth", "fastprod prepare", "fastprod train", "fastprod clean", "fastprod finetune")


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_the_worked_example_finetunes_on_a_subset_smaller_than_a_batch(tmp_path):
    tiny_demo_config(tmp_path / "configs" / "demo.yaml", SMALL)
    sections = readme_sections()
    demo, example = sections["What the demo does"], sections["A worked example, end to end"]
    commands = [c for c in demo + example if c.startswith(STAGES)]
    assert [c.split()[1] for c in commands] == ["synth", "prepare", "train", "clean", "finetune"]
    outputs = [run_as_written(c + (" " + DATA if c.startswith("fastprod synth") else ""), tmp_path) for c in commands]

    run, finetuned = yaml.safe_load((tmp_path / "runs/recipe/resolved.yaml").read_text()), \
        yaml.safe_load((tmp_path / "runs/recipe-finetune/resolved.yaml").read_text())
    assert run["data"]["batch_size"] == 32 and run["loss"]["name"] == "sce" and run["o2u"]["enabled"]
    subset = Manifest.load(tmp_path / "runs/recipe-clean/balanced-k3")
    assert len(subset.split("train")) == 30 == finetuned["data"]["batch_size"]
    assert "data.batch_size 32 -> 30" in outputs[-1]
    assert finetuned["loss"] == run["loss"] and finetuned["o2u"] == run["o2u"]  # the run's settings, kept
    assert finetuned["model"] == {**run["model"], "init_from": "runs/recipe/final/model.pt"}
    assert finetuned["optim"] == {**run["optim"], "lr": pytest.approx(run["optim"]["lr"] / 10)}
    assert Path(finetuned["data"]["manifest"]) == Path("runs/recipe-clean/balanced-k3")
    assert finetuned["schedule"]["epochs"] == 3
    assert json.loads((tmp_path / "runs/recipe-finetune/summary.json").read_text())["val_top1_error"] <= 1


@pytest.mark.e2e
@pytest.mark.parametrize("extra, says", [
    (["--set", "optim.lr=0.5"], "--set optim.lr: the finetune's LR is --lr"),
    ([], "config file not found"),
])
def test_bad_finetune_arguments_exit_2(tmp_path, capsys, extra, says):
    argv = ["finetune", "--run", str(tmp_path / "nothing"), "--data", str(tmp_path), "--out", str(tmp_path / "ft")]
    if extra:
        (tmp_path / "nothing").mkdir()
        (tmp_path / "nothing" / "resolved.yaml").write_text((ROOT / "configs" / "demo.yaml").read_text())
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("config error:") and says in err and "Traceback" not in err
