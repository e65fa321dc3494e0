"""`fastprod ladder` end to end at the smallest size: the plain-CE reference, every step of the seed's ladder with
its cumulative settings and each long-tail step on the O2U step's settings run for each seed, the table's means are the seeds' mean, a re-run resumes, and
the same ladder runs on a prepared dataset with a truth file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastprod.cli import main
from fastprod.config import load_config
from fastprod.data.manifest import Manifest
from fastprod.recipe.ladder import REFERENCE, STEPS, TAIL_STEPS

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

TINY = """
data: {manifest: unused, image_size: 16, batch_size: 16, eval_batch_size: 64, workers: 0}
model: {name: resnet10t}
optim: {lr: 0.05}
schedule: {epochs: 1}
run: {dir: unused, precision: fp32, progress: false}
"""


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder")
    (tmp / "tiny.yaml").write_text(TINY)
    args = ["ladder", "--config", str(tmp / "tiny.yaml"), "--out", str(tmp / "out"), "--classes", "3",
            "--train-images", "48", "--val-per-class", "2", "--k", "2", "--finetune-epochs", "1", "--seeds", "2"]
    assert main(args) == 0
    return tmp / "out", args


def test_every_step_and_seed_ran_with_cumulative_settings(ladder):
    out, _ = ladder
    report = json.loads((out / "ladder.json").read_text())
    reference, rows = report["steps"][0], report["steps"][1:]
    cleaning = len(STEPS)
    assert reference["step"] == REFERENCE[0] and reference["run"] == str(out / "step-reference")
    assert [r["step"] for r in rows[:cleaning]] == [name for name, _ in STEPS] and "cleaning" in rows[cleaning]["step"]
    assert [r["step"] for r in rows[cleaning + 1:]] == [name for name, *_ in TAIL_STEPS]
    for step, r in [("reference", reference), *enumerate(rows)]:
        assert len(r["seed_errors"]) == 2 and r["val_top1_error"] == pytest.approx(np.mean(r["seed_errors"]))
        for seed in range(2):
            cfg = load_config(out / f"step-{step}" / f"seed-{seed}" / "resolved.yaml")
            assert cfg.run.seed == seed
            on_reference = step == "reference" or step > cleaning and TAIL_STEPS[step - cleaning - 1][1] == "reference"
            if on_reference:  # plain CE on whole, unaugmented images (+ a tail step's own settings)
                augment = cfg.data.augment
                assert augment.rotation_p == augment.hflip_p == augment.cutout_p == augment.perspective_p == 0
                assert augment.crop_scale == augment.crop_ratio == (1.0, 1.0) and cfg.model.drop_rate == 0
                assert cfg.loss.name == "ce" and cfg.data.sampler == ("sqrt" if step == cleaning + 6 else "uniform")
                assert cfg.o2u.enabled == (step == cleaning + 5)
                assert cfg.loss.logit_adjust_tau == (step in (cleaning + 4, cleaning + 5))
                continue
            tail = step > cleaning  # each tail step: the O2U step's settings and its own
            assert (cfg.data.augment.hflip_p > 0) == (step >= 1)
            assert (cfg.optim.weight_decay > 0) == (step >= 2)
            assert (cfg.model.drop_rate > 0) == (step >= 3 and step != cleaning + 3)
            assert (cfg.loss.name == "sce") == (step >= 4)
            assert cfg.o2u.enabled == (step == 5 or tail)
            assert (cfg.data.sampler == "sqrt") == (step == cleaning + 1)
            assert cfg.o2u.per_class == (step != cleaning + 7)
            assert (cfg.loss.logit_adjust_tau == 1) == (step in (cleaning + 2, cleaning + 3))
    finetune = load_config(out / f"step-{len(STEPS)}" / "seed-1" / "resolved.yaml")
    assert finetune.model.init_from == str(out / f"step-{len(STEPS) - 1}" / "seed-1" / "final" / "model.pt")
    assert finetune.data.manifest == str(out / "clean" / "balanced-k2")
    table = (out / "ladder.md").read_text()
    assert table.count("\n| ") == len(rows) + 2 and "mean of 2 seeds" in table
    for r in report["steps"]:  # diagnosis: fractions, against the noise file and the predictions (None: an empty shot group)
        assert all(v is None or 0 <= v <= 1 for v in r["diagnosis"].values()), r["diagnosis"]
        assert r["diagnosis"]["noisy_fitted"] is not None and r["diagnosis"]["val_error_few"] is not None
    detection = rows[len(STEPS) - 1]["o2u_noise_detection"]  # one SGDR cycle in one epoch
    assert len(detection) == 1 and detection[0]["samples"] == 48 and "AUROC per SGDR cycle" in table
    with_o2u = [r["step"] for r in rows if r.get("o2u_noise_detection")]  # every step with O2U, and only those
    assert with_o2u == [STEPS[-1][0], *(name for name, base, own in TAIL_STEPS
                                        if base == "o2u" or "o2u.enabled=true" in own)]
    assert all(f"- {name}: " in table for name in with_o2u)
    assert "Cleaning removed" in table and "post-hoc logit adjustment" in table  # cleaning is no longer the last row


def test_a_rerun_resumes_without_training(ladder, capsys):
    out, args = ladder
    before = (out / "ladder.json").read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert "run already complete" in capsys.readouterr().out
    assert (out / "ladder.json").read_text() == before


def test_the_ladder_runs_on_a_prepared_dataset_with_a_truth_file(ladder, tmp_path, capsys):
    """--manifest and --noise-truth ({image_id: true class_id}): the noise figures come from the truth file."""
    out, _ = ladder
    prepared = out / "data" / "prepared"
    noise = json.loads((out / "data" / "raw" / "noise.json").read_text())
    data = Manifest.load(prepared)
    train = data.split("train")
    truth = {i: noise[i]["true"] if i in noise else data.class_ids[label] for i, label in zip(train.image_ids, train.labels)}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    args = ["ladder", "--config", str(out.parent / "tiny.yaml"), "--out", str(tmp_path / "mine"), "--manifest",
            str(prepared), "--k", "2", "--finetune-epochs", "1", "--seeds", "1", "--noise-truth"]
    assert main([*args, str(tmp_path / "truth.json")]) == 0
    assert json.loads((tmp_path / "mine" / "noise.json").read_text()) == noise
    report = json.loads((tmp_path / "mine" / "ladder.json").read_text())
    assert str(prepared) in report["setup"] and len(report["steps"]) == 1 + len(STEPS) + 1 + len(TAIL_STEPS)
    assert report["steps"][1 + len(STEPS)]["cleaning"]["noisy"] == len(noise)
    assert report["steps"][len(STEPS)]["o2u_noise_detection"][0]["noisy"] == len(noise)
    (tmp_path / "bad.json").write_text(json.dumps({"not-an-image": data.class_ids[0]}))
    capsys.readouterr()
    assert main([*args, str(tmp_path / "bad.json")]) == 2
    assert '"not-an-image" is not a training image' in capsys.readouterr().err
