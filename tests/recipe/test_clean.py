"""2-fold cleaning, the balanced subset and finetuning from a trained model's weights."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastprod.config import ConfigError
from fastprod.data.manifest import Manifest, SplitView
from fastprod.recipe.clean import agreement, balanced_subset, per_class_report, read_noise, stratified_halves

ROOT = Path(__file__).resolve().parents[2]


def test_stratified_halves_split_every_class_evenly():
    labels = np.random.default_rng(0).integers(0, 7, size=101)
    fold = stratified_halves(labels, seed=4)
    for cls in range(7):
        sizes = np.bincount(fold[labels == cls], minlength=2)
        assert abs(sizes[0] - sizes[1]) <= 1
    assert np.array_equal(fold, stratified_halves(labels, seed=4))
    assert not np.array_equal(fold, stratified_halves(labels, seed=5))


def test_agreement_is_judged_per_class():
    """Agreeing = predicted as its label, or a probability of its label at least its class's mean one
    (a plain-Python reference); a tail class the fold model never predicts still keeps its most
    confident samples, where the arg-max alone keeps none."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], [40, 12, 5])
    pred = np.where(rng.random(57) < 0.8, labels, 0)
    pred[labels == 2] = 0  # the tail class is never predicted
    conf = rng.random(57) * np.where(labels == 2, 0.2, 1.0)
    agree, threshold = agreement(labels, pred, conf, classes=4)
    for c in range(3):
        members = [i for i in range(57) if labels[i] == c]
        mean = sum(float(conf[i]) for i in members) / len(members)
        assert threshold[c] == pytest.approx(mean, rel=1e-12)
        assert [bool(agree[i]) for i in members] == [pred[i] == c or conf[i] >= mean for i in members]
    assert np.isnan(threshold[3])
    assert agree[labels == 2].sum() >= 1 and not (pred[labels == 2] == 2).any()


def test_balanced_subset_keeps_min_k_per_class_agreeing_first():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), [20, 9, 6, 4, 2, 1])
    conf = rng.random(len(labels))
    agree = rng.random(len(labels)) < 0.5
    agree[labels == 2] = False  # a class where no sample agrees
    agree[labels == 1] = np.arange(9) < 2  # one where fewer than k agree
    chosen = balanced_subset(labels, conf, agree, k=3)
    for cls in range(6):
        members = [i for i in range(len(labels)) if labels[i] == cls]
        ranked = sorted(members, key=lambda i: (not agree[i], -conf[i]))
        assert set(np.flatnonzero(chosen & (labels == cls))) == set(ranked[:3])
        assert (chosen & (labels == cls)).sum() == min(3, len(members))


def test_the_per_class_selections_equal_a_loop_over_each_class():
    """stratified_halves and balanced_subset (and the ensemble's stratified_holdout, the same kind of draw)
    against the plain loop over classes that finds each class's samples with `labels == c` (O(N x C): minutes at
    3M images of 50,030 classes): the same folds, subset and held-out rows for the same seed."""
    from fastprod.score.ensemble import stratified_holdout

    rng = np.random.default_rng(6)
    labels = rng.integers(0, 900, 5000) * 3  # classes with gaps, and some of 1-3 samples
    conf, agree = rng.random(len(labels)), rng.random(len(labels)) < 0.4
    conf[::7] = 0.5  # ties: the lower index first

    draw = np.random.default_rng(3)
    expected_fold = np.zeros(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = draw.permutation(np.flatnonzero(labels == cls))
        expected_fold[members[draw.integers(2)::2]] = 1
    np.testing.assert_array_equal(stratified_halves(labels, seed=3), expected_fold)

    expected_subset = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        expected_subset[members[np.lexsort((-conf[members], ~agree[members]))][:3]] = True
    np.testing.assert_array_equal(balanced_subset(labels, conf, agree, 3), expected_subset)

    draw = np.random.default_rng(8)
    expected_held = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = draw.permutation(np.flatnonzero(labels == cls))
        expected_held[members[:min(int(round(0.3 * len(members))), len(members) - 1)]] = True
    np.testing.assert_array_equal(stratified_holdout(labels, 0.3, seed=8), expected_held)

def test_per_class_report_sums_to_the_totals():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 50)
    agree, chosen, noisy = rng.random(50) < 0.6, rng.random(50) < 0.3, rng.random(50) < 0.2
    rows = per_class_report(labels, rng.random(4), agree, chosen, ["a", "b", "c", "d"], noisy)
    totals = {"train_images": 50, "agreeing": agree.sum(), "balanced": chosen.sum(), "filled_in": (chosen & ~agree).sum(),
              "noisy": noisy.sum(), "noisy_removed": (noisy & ~agree).sum(), "clean_lost": (~noisy & ~agree).sum(),
              "noisy_in_balanced": (noisy & chosen).sum()}
    for key, total in totals.items():
        assert sum(r[key] for r in rows) == total, key
    assert [r["class_id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["train_images"] for r in rows] == np.bincount(labels, minlength=4).tolist()


TRAIN = SplitView("train", ["/x/0.jpg", "/x/1.jpg", "/x/2.jpg"], np.array([0, 1, 1]), ["i0", "i1", "i2"])


@pytest.mark.parametrize("content, says", [
    ('{"i0": "00000", "i1": "00001", "i2": "00000"}', 'entry "i0": "00000"'),  # a map of every image to its true class
    ('["i1"]', "a JSON list"),
    ("i1\ni2\n", "cannot read it as JSON"),
    ('{"i1": {"given": "00001", "true": "00000"}, "zz": {"given": "00001", "true": "00000"}}', '"zz"'),
    ('{"i1": {"given": "00000", "true": "00001"}}', "is labelled 00001"),  # another dataset's labels
])
def test_a_noise_file_in_another_format_is_refused(tmp_path, content, says):
    path = tmp_path / "truth.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        read_noise(path, TRAIN, ["00000", "00001"])
    message = str(err.value)
    assert message.startswith(f"--noise {path}: ") and says in message and '{"given": class_id' in message
    assert "\n" not in message


def test_the_noise_file_of_synth_marks_its_images(tmp_path):
    path = tmp_path / "noise.json"
    path.write_text('{"i2": {"given": "00001", "true": "00000"}}')
    assert read_noise(path, TRAIN, ["00000", "00001"]).tolist() == [False, False, True]


def run_clean(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastprod.cli", "clean", "--config", str(config), "--out", str(out),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_clean_command_end_to_end(manifest_dir, tmp_path):
    config = tmp_path / "clean.yaml"
    config.write_text(f"""
data: {{manifest: {manifest_dir}, image_size: 32, batch_size: 8, eval_batch_size: 64, workers: 0}}
model: {{name: resnet10t}}
optim: {{lr: 0.05}}
schedule: {{epochs: 1}}
run: {{progress: false}}
""")
    noise = Path(Manifest.load(manifest_dir).root) / "noise.json"
    out = tmp_path / "cleaned"
    truth = tmp_path / "truth.json"  # every image -> its class: not the noise format, refused before any training
    full = Manifest.load(manifest_dir)
    train = full.split("train")
    truth.write_text(json.dumps({i: full.class_ids[c] for i, c in zip(train.image_ids, train.labels)}))
    done = run_clean(config, out, "--noise", str(truth))
    last = done.stderr.strip().splitlines()[-1]  # (after torch's own warnings)
    assert done.returncode == 2 and last.startswith(f"config error: --noise {truth}: ") and not out.exists()

    for k in (2, 3):  # the second run re-uses the folds and leaves the first one's outputs alone
        done = run_clean(config, out, "--k", str(k), "--noise", str(noise))
        assert done.returncode == 0, done.stderr[-3000:]
        if k == 2:
            first = {name: (out / name).read_bytes() for name in ("report-k2.json", "per-class-k2.csv",
                                                                  "balanced-k2/manifest.parquet")}
    assert first == {name: (out / name).read_bytes() for name in first}
    noisy = set(json.loads(noise.read_text()))
    cleaned = Manifest.load(out / "cleaned")
    removed = set(train.image_ids) - set(cleaned.split("train").image_ids)
    sizes = np.bincount(train.labels, minlength=full.num_classes)
    for k in (2, 3):
        report = json.loads((out / f"report-k{k}.json").read_text())
        balanced = Manifest.load(out / f"balanced-k{k}")
        assert report["kept"] + report["removed"] == len(train) == report["train_images"]
        assert len(cleaned.split("train")) == report["kept"] and len(balanced.split("train")) == report["balanced"]
        assert np.bincount(balanced.split("train").labels, minlength=full.num_classes).tolist() == \
            np.minimum(k, sizes).tolist()  # every class, however few of its samples agree
        assert report["classes_in_balanced"] == report["classes"] == int((sizes > 0).sum())
        assert cleaned.split("val").image_ids == full.split("val").image_ids == balanced.split("val").image_ids
        assert cleaned.class_ids == balanced.class_ids == full.class_ids
        assert report["noisy_removed"] == len(removed & noisy) and report["clean_lost"] == len(removed - noisy)
        with open(out / f"per-class-k{k}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["train_images"]) for r in rows] == sizes.tolist()
        for key, total in (("agreeing", report["kept"]), ("balanced", report["balanced"]), ("noisy", report["noisy"]),
                           ("noisy_removed", report["noisy_removed"]), ("clean_lost", report["clean_lost"])):
            assert sum(int(r[key]) for r in rows) == total, key
    for fold in (0, 1):  # each fold trained on its own half
        half = Manifest.load(out / f"fold-{fold}" / "data").split("train")
        assert abs(2 * len(half) - len(train)) <= 6 and (out / f"fold-{fold}" / "run" / "final" / "model.pt").exists()

    before = (out / "fold-0" / "data" / "manifest.parquet").read_bytes()  # other folds: refused, nothing overwritten
    done = run_clean(config, out, "--k", "4", "--set", "run.seed=1")
    assert done.returncode == 2 and "holds another subset" in done.stderr and str(out / "fold-0" / "data") in done.stderr
    assert (out / "fold-0" / "data" / "manifest.parquet").read_bytes() == before and not (out / "balanced-k4").exists()
