"""Class-based weighted ensemble: apply against a float64 reference, fit against hand-computed
per-class accuracies, the rare-class fallback, the held-out choice of the scaling, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fastprod.score.ensemble import (Preds, apply, class_weights, fit, load_preds, per_class_accuracy,
                                     stratified_holdout, weighted_topk_torch)


def write_preds(directory: Path, probs: np.ndarray, labels: np.ndarray | None = None, paths: list[str] | None = None,
                class_ids: list[str] | None = None) -> Path:
    """A score directory as `fastprod score --probs` writes it (probs.npy, images.parquet, meta.json's class ids)."""
    directory.mkdir(parents=True)
    mm = np.lib.format.open_memmap(directory / "probs.npy", mode="w+", dtype=np.float16, shape=probs.shape)
    mm[:] = probs
    mm.flush()
    n = len(probs)
    labels = np.full(n, -1) if labels is None else labels
    paths = [f"/images/im{i}.jpg" for i in range(n)] if paths is None else paths
    pq.write_table(pa.table({"image_id": [Path(p).name for p in paths], "path": paths,
                             "label": pa.array(labels, pa.int32())}), directory / "images.parquet")
    class_ids = [f"c{c}" for c in range(probs.shape[1])] if class_ids is None else class_ids
    (directory / "meta.json").write_text(json.dumps({"class_ids": class_ids}))
    return directory


def one_error_line(capsys, command: str) -> str:
    """The single `fastprod COMMAND: error: ...` line a refused command prints to stderr (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith(f"fastprod {command}: error: "), err
    return err


def random_probs(rng, m: int, n: int, c: int) -> np.ndarray:
    x = rng.gamma(0.3, size=(m, n, c))
    return (x / x.sum(-1, keepdims=True)).astype(np.float16)


def test_apply_matches_a_float64_reference(tmp_path):
    rng = np.random.default_rng(0)
    M, N, C = 3, 37, 11
    probs = random_probs(rng, M, N, C)
    probs[1, 5] = np.nan  # an image one scorer could not decode
    preds = load_preds([write_preds(tmp_path / f"p{m}", probs[m]) for m in range(M)])
    w = rng.random((M, C)).astype(np.float32)
    w /= w.sum(0)
    summary = apply(preds, w, tmp_path / "out", topk=4, save_probs=True, chunk=8)
    ref = np.einsum("mnc,mc->nc", probs.astype(np.float64), w.astype(np.float64))
    got = np.load(tmp_path / "out" / "probs.npy")
    ok = np.arange(N) != 5
    np.testing.assert_allclose(got[ok].astype(np.float64), ref[ok], rtol=2e-3, atol=1e-4)
    table = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    order = np.argsort(-ref, axis=1, kind="stable")[:, :4]
    for n in np.flatnonzero(ok):
        assert table[n]["topk_labels"] == order[n].tolist()
        np.testing.assert_allclose(table[n]["topk_probs"], ref[n, order[n]], rtol=1e-5)
    assert not table[5]["ok"] and table[5]["pred"] == -1 and summary["missing"] == 1


def test_per_class_accuracy_by_hand_and_rare_class_fallback():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    pred = np.array([[0, 0, 0, 1, 1, 1, 0, 0, 2],   # model 0: class 0 3/4, class 1 2/4, class 2 1/1 -> 6/9
                     [0, 2, 2, 2, 1, 1, 1, 1, 0]])  # model 1: class 0 1/4, class 1 4/4, class 2 0/1 -> 5/9
    acc, counts, global_acc = per_class_accuracy(pred, labels, num_classes=4, min_count=1)
    np.testing.assert_allclose(acc[:, :3], [[0.75, 0.5, 1.0], [0.25, 1.0, 0.0]])
    np.testing.assert_array_equal(counts, [4, 4, 1, 0])
    np.testing.assert_allclose(global_acc, [6 / 9, 5 / 9])
    np.testing.assert_allclose(acc[:, 3], global_acc)  # no samples at all: global accuracy
    acc2, _, _ = per_class_accuracy(pred, labels, num_classes=4, min_count=2)
    np.testing.assert_allclose(acc2[:, 2], global_acc)  # 1 sample < min_count: global accuracy
    np.testing.assert_allclose(acc2[:, :2], acc[:, :2])
    shrunk, _, _ = per_class_accuracy(pred, labels, num_classes=4, min_count=1, shrink=2.0)
    np.testing.assert_allclose(shrunk[:, :3], [[(3 + 2 * 6 / 9) / 6, (2 + 2 * 6 / 9) / 6, (1 + 2 * 6 / 9) / 3],
                                               [(1 + 2 * 5 / 9) / 6, (4 + 2 * 5 / 9) / 6, (0 + 2 * 5 / 9) / 3]])

    w = class_weights(acc, "power", 2.0)
    np.testing.assert_allclose(w[:, 0], [0.75**2 / (0.75**2 + 0.25**2), 0.25**2 / (0.75**2 + 0.25**2)])
    np.testing.assert_allclose(w[:, 2], [1.0, 0.0])
    np.testing.assert_allclose(class_weights(acc, "power", 0.0), 0.5)  # p = 0: the plain average
    s = class_weights(acc, "softmax", 0.1)
    np.testing.assert_allclose(s[:, 1], np.exp([5.0, 10.0]) / np.exp([5.0, 10.0]).sum())
    np.testing.assert_allclose(class_weights(np.zeros((2, 3)), "power", 4.0), 0.5)  # all zero: uniform
    for scaling, value in (("power", 3.0), ("softmax", 0.05)):
        np.testing.assert_allclose(class_weights(acc, scaling, value).sum(0), 1.0)


def test_stratified_holdout_keeps_every_class_in_the_fitting_part():
    labels = np.repeat(np.arange(5), [1, 2, 10, 10, 3])
    held = stratified_holdout(labels, 0.3, seed=0)
    for c, n in enumerate([1, 2, 10, 10, 3]):
        assert (~held[labels == c]).sum() >= 1 and held[labels == c].sum() == min(round(0.3 * n), n - 1)


def specialists(tmp_path: Path, n_per_class: int = 40, seed: int = 0):
    """Model 0 is right on classes 0-4 and guesses on 5-9, model 1 the reverse, model 2 is mediocre everywhere."""
    rng = np.random.default_rng(seed)
    C = 10
    labels = np.repeat(np.arange(C), n_per_class)
    rng.shuffle(labels)
    probs = []
    for good, sharp in ((range(0, 5), 0.9), (range(5, 10), 0.9), (range(10), 0.35)):
        logits = rng.normal(size=(len(labels), C))
        hit = np.isin(labels, list(good)) & (rng.random(len(labels)) < sharp)
        logits[hit, labels[hit]] += 4.0
        p = np.exp(logits)
        probs.append(p / p.sum(1, keepdims=True))
    paths = [write_preds(tmp_path / f"m{m}", p, labels) for m, p in enumerate(probs)]
    return paths, labels


def test_fit_prefers_class_weights_where_models_specialise(tmp_path):
    paths, labels = specialists(tmp_path)
    preds = load_preds(paths)
    result = fit(preds, labels, scaling="power", holdout=0.3, min_count=3)
    errors = dict(zip(result["grid"], result["holdout_errors"]))
    assert result["value"] > 0 and errors[result["value"]] < errors[0.0]  # beats the plain average
    assert errors[result["value"]] < min(result["single_model_holdout_errors"])
    w = result["weights"]
    assert w.shape == (3, 10) and np.allclose(w.sum(0), 1.0)
    assert (w[0, :5] > w[1, :5]).all() and (w[1, 5:] > w[0, 5:]).all()
    arg = np.stack([np.argmax(np.load(p / "probs.npy"), 1) for p in paths])
    acc, _, _ = per_class_accuracy(arg, labels, 10, 3)
    np.testing.assert_allclose(w, class_weights(acc, "power", result["value"]), rtol=1e-6)  # refit on all rows
    shrunk = fit(preds, labels, scaling="power", holdout=0.3, min_count=3, shrinks=(0.0, 5.0, 1000.0))
    assert len(shrunk["holdout_errors"]) == 3 * len(shrunk["grid"]) and shrunk["shrink"] in (0.0, 5.0, 1000.0)
    assert min(shrunk["holdout_errors"]) == shrunk["holdout_errors"][
        shrunk["shrinks"].index(shrunk["shrink"]) * len(shrunk["grid"]) + shrunk["grid"].index(shrunk["value"])]
    soft = fit(preds, labels, scaling="softmax", holdout=0.3, min_count=3)
    assert soft["holdout_errors"][soft["grid"].index(soft["value"])] < errors[0.0]


def test_fit_ignores_unlabelled_and_missing_rows(tmp_path):
    paths, labels = specialists(tmp_path, n_per_class=10)
    labels = labels.copy()
    labels[:7] = -1
    mm = np.load(paths[2] / "probs.npy", mmap_mode="r+")
    mm[7:9] = np.nan
    mm.flush()
    result = fit(load_preds(paths), labels, holdout=0.3, min_count=2)
    assert result["fit_rows"] == len(labels) - 9


def test_argmax_and_finite_flags_every_non_finite_row(tmp_path):
    """NaN, +inf and -inf rows (alone or with others) are not finite, rows of float16's largest values are; the
    arg-max of a finite row is numpy's, in chunks of 2 rows."""
    from fastprod.score.ensemble import argmax_and_finite

    rng = np.random.default_rng(4)
    probs = random_probs(rng, 2, 9, 7)
    probs[0, 1, 3], probs[1, 2, 0], probs[0, 4, 6] = np.nan, np.inf, -np.inf
    probs[1, 6] = [np.inf, -np.inf, np.nan, 0, 0, 0, 0]
    probs[:, 7] = np.finfo(np.float16).max  # finite, and a float16 sum of them would not be
    preds = load_preds([write_preds(tmp_path / f"p{m}", probs[m]) for m in range(2)])
    arg, finite = argmax_and_finite(preds, budget=4 * 3 * 7 * 2)
    expected = np.isfinite(probs).all(axis=(0, 2))
    np.testing.assert_array_equal(finite, expected)
    assert finite.sum() == 5
    np.testing.assert_array_equal(arg[:, expected], probs[:, expected].astype(np.float64).argmax(2))

def test_ensemble_commands(tmp_path, capsys):
    from fastprod.cli import main

    paths, labels = specialists(tmp_path, n_per_class=30)
    np.save(tmp_path / "labels.npy", labels)
    args = ["--preds", *map(str, paths)]
    assert main(["ensemble", "fit", *args, "--labels", str(paths[0]), "--out", str(tmp_path / "w.npz")]) == 0
    with np.load(tmp_path / "w.npz") as f:
        info = json.loads(str(f["info"]))
        assert f["weights"].shape == (3, 10) and info["scaling"] == "power"
    assert main(["ensemble", "apply", "--weights", str(tmp_path / "w.npz"), *args, "--out", str(tmp_path / "cw"),
                 "--labels", str(tmp_path / "labels.npy"), "--chunk", "64"]) == 0
    assert main(["ensemble", "apply", "--weights", "uniform", *args, "--out", str(tmp_path / "avg")]) == 0
    cw = json.loads((tmp_path / "cw" / "summary.json").read_text())
    avg = json.loads((tmp_path / "avg" / "summary.json").read_text())
    assert cw["images"] == avg["images"] == 300 and cw["top1_error"] < avg["top1_error"]  # (fitted on these rows)
    capsys.readouterr()  # the progress bars so far
    assert main(["ensemble", "apply", "--weights", str(tmp_path / "w.npz"), *args[:-1],
                 "--out", str(tmp_path / "x")]) == 2
    assert "shape" in one_error_line(capsys, "ensemble apply")


def test_fit_and_apply_show_a_bar_per_pass_over_the_rows(tmp_path, capsys):
    """As a user runs them: `ensemble fit` shows its arg-max pass over all 100 rows and its pass over the 30
    held-out ones, `ensemble apply` its pass over the rows, on stderr; --no-progress shows none."""
    from fastprod.cli import main

    paths, _ = specialists(tmp_path, n_per_class=10)
    preds = ["--preds", *map(str, paths)]
    fit_args = ["ensemble", "fit", *preds, "--labels", str(paths[0]), "--out", str(tmp_path / "w.npz")]
    apply_args = ["ensemble", "apply", "--weights", str(tmp_path / "w.npz"), *preds, "--out", str(tmp_path / "out")]
    assert main(fit_args) == 0
    err = capsys.readouterr().err
    assert "arg-max: 100%" in err and "100/100" in err and "held-out: 100%" in err and "30/30" in err, err
    assert main(apply_args) == 0
    assert "ensemble: 100%" in capsys.readouterr().err
    assert main([*fit_args, "--no-progress"]) == 0 and main([*apply_args, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""

def test_preds_reject_mismatched_inputs(tmp_path):
    a = write_preds(tmp_path / "a", np.full((4, 3), 1 / 3))
    b = write_preds(tmp_path / "b", np.full((5, 3), 1 / 3))
    with pytest.raises(ValueError, match="not the same images"):
        load_preds([a, b])
    assert Preds(a).shape == (4, 3)


@pytest.mark.parametrize("device,threads", [
    ("cpu", 1), ("cpu", 2),
    pytest.param("cuda", 0, marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path needs CUDA")])])
def test_apply_over_many_classes(tmp_path, device, threads):
    rng = np.random.default_rng(threads)
    M, N, C = 2, 21, 6003  # several class blocks; C not a multiple of the block or group size
    probs = random_probs(rng, M, N, C)
    probs[:, 3, 6002] = 1.0  # the winner in the partial last group
    preds = load_preds([write_preds(tmp_path / f"p{m}", probs[m]) for m in range(M)])
    w = rng.random((M, C)).astype(np.float32)
    apply(preds, w, tmp_path / "out", topk=5, chunk=4, threads=threads, device=device)
    ref = np.einsum("mnc,mc->nc", probs.astype(np.float64), w.astype(np.float64))
    table = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    assert [r["topk_labels"] for r in table] == np.argsort(-ref, axis=1, kind="stable")[:, :5].tolist()
    assert table[3]["pred"] == 6002


def test_the_gpu_path_computes_the_same_sum_on_any_device():
    """weighted_topk_torch (what --device cuda runs) on CPU tensors, against float64."""
    rng = np.random.default_rng(5)
    probs = random_probs(rng, 3, 10, 700)
    w = rng.random((3, 700)).astype(np.float32)
    v, i, total = weighted_topk_torch(list(probs), torch.from_numpy(w), 2, 9, 5)
    ref = np.einsum("mnc,mc->nc", probs[:, 2:9].astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(total.numpy(), ref, rtol=1e-6)
    np.testing.assert_array_equal(i.numpy(), np.argsort(-ref, axis=1, kind="stable")[:, :5])


def test_outputs_never_overwrite_the_inputs(tmp_path, capsys):
    from fastprod.cli import main

    paths, _ = specialists(tmp_path / "preds", n_per_class=5)
    before = [np.load(p / "probs.npy") for p in paths]
    args = ["--preds", *map(str, paths)]
    for out in (paths[0], paths[1] / "sub", tmp_path / "preds"):  # is, lies inside, contains an input
        assert main(["ensemble", "apply", "--weights", "uniform", *args, "--out", str(out), "--probs"]) == 2
        err = one_error_line(capsys, "ensemble apply")
        assert f"--out {out}" in err and "input" in err
    for out in (paths[2] / "probs.npy", paths[0] / "w.npz"):
        assert main(["ensemble", "fit", *args, "--labels", str(paths[0]), "--out", str(out)]) == 2
        assert f"--out {out}" in one_error_line(capsys, "ensemble fit")
    for p, probs in zip(paths, before):
        np.testing.assert_array_equal(np.load(p / "probs.npy"), probs)
        assert sorted(f.name for f in p.iterdir()) == ["images.parquet", "meta.json", "probs.npy"]
    assert main(["ensemble", "fit", *args, "--labels", str(paths[0]), "--out", str(tmp_path / "w.npz")]) == 0
    assert main(["ensemble", "apply", "--weights", str(tmp_path / "w.npz"), *args, "--out", str(tmp_path / "out"),
                 "--probs"]) == 0
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["predictions.parquet", "probs.npy", "summary.json"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out", "preds", "w.npz"]  # no temporary left behind


def test_inputs_must_hold_the_same_rows_and_classes(tmp_path, capsys):
    from fastprod.cli import main

    rng = np.random.default_rng(2)
    probs = random_probs(rng, 2, 12, 4)
    rows = [f"/data/{c}/000.jpg" for c in "abcdefghijkl"]
    a = write_preds(tmp_path / "a", probs[0], paths=rows)
    cases = {  # each against a: a different order, other images, other classes (same count)
        "reversed": write_preds(tmp_path / "reversed", probs[1][::-1], paths=rows[::-1]),
        "others": write_preds(tmp_path / "others", probs[1], paths=[r.replace("000", "001") for r in rows]),
        "classes": write_preds(tmp_path / "classes", probs[1], paths=rows, class_ids=["c1", "c0", "c2", "c3"]),
    }
    np.save(tmp_path / "bare.npy", probs[1][::-1])
    np.save(tmp_path / "bare2.npy", probs[1])
    cases["bare"] = tmp_path / "bare.npy"  # its rows cannot be checked
    for name, other in cases.items():
        with pytest.raises(ValueError) as err:
            load_preds([a, other])
        assert str(a) in str(err.value) and str(other) in str(err.value), name
        assert main(["ensemble", "apply", "--weights", "uniform", "--preds", str(a), str(other),
                     "--out", str(tmp_path / f"out-{name}")]) == 2
        message = one_error_line(capsys, "ensemble apply")
        assert str(a) in message and str(other) in message
    assert load_preds([a, write_preds(tmp_path / "same", probs[1], paths=rows)])[1].shape == (12, 4)
    assert len(load_preds([tmp_path / "bare.npy", tmp_path / "bare2.npy"])) == 2  # bare only: the caller's order


def test_labels_from_a_manifest_are_matched_by_path(tmp_path, capsys):
    """A folder dataset where every class has its own 000.jpg: image ids repeat, paths do not."""
    from PIL import Image

    from fastprod.cli import main
    from fastprod.data.manifest import Manifest
    from fastprod.data.prepare import prepare

    for c, colour in enumerate(("red", "green", "blue")):
        (tmp_path / "raw" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 24), colour).save(tmp_path / "raw" / f"class{c}" / f"{i:03d}.jpg")
    prepare(tmp_path / "raw", tmp_path / "prepared", workers=1)
    manifest = Manifest.load(tmp_path / "prepared")
    view = manifest.split("train")
    order = np.random.default_rng(0).permutation(len(view))
    rows = [view.paths[j] for j in order] + ["/elsewhere/class0/000.jpg"]  # the last is not in the manifest
    truth = np.append(view.labels[order], -1)
    probs = np.full((len(rows), 3), 0.1, dtype=np.float32)
    probs[np.arange(len(rows)), np.maximum(truth, 0)] = 0.8  # every model right on every image
    paths = [write_preds(tmp_path / f"m{m}", probs, paths=rows, class_ids=manifest.class_ids) for m in range(2)]
    args = ["--preds", *map(str, paths), "--labels", str(tmp_path / "prepared"), "--split", "train"]
    assert main(["ensemble", "fit", *args, "--out", str(tmp_path / "w.npz"), "--holdout", "0"]) == 0
    with np.load(tmp_path / "w.npz") as f:
        assert json.loads(str(f["info"]))["fit_rows"] == len(view) and (f["global_acc"] == 1.0).all()
    assert main(["ensemble", "apply", "--weights", "uniform", *args, "--out", str(tmp_path / "avg")]) == 0
    table = pq.read_table(tmp_path / "avg" / "predictions.parquet").to_pydict()
    assert table["label"] == truth.tolist() and table["path"] == rows
    assert json.loads((tmp_path / "avg" / "summary.json").read_text())["top1_error"] == 0.0

    strangers = write_preds(tmp_path / "strangers", probs, paths=[f"/elsewhere/{j}.jpg" for j in range(len(rows))],
                            class_ids=manifest.class_ids)
    capsys.readouterr()  # the progress bars so far
    assert main(["ensemble", "apply", "--weights", "uniform", "--preds", str(strangers), *args[3:],
                 "--out", str(tmp_path / "x")]) == 2
    assert "none of" in one_error_line(capsys, "ensemble apply")
    shuffled = write_preds(tmp_path / "shuffled", probs, paths=rows, class_ids=manifest.class_ids[::-1])
    assert main(["ensemble", "apply", "--weights", "uniform", "--preds", str(shuffled), *args[3:],
                 "--out", str(tmp_path / "y")]) == 2
    assert str(shuffled) in one_error_line(capsys, "ensemble apply")


def float64_per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int, min_count: int,
                               shrink: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference of `per_class_accuracy`, counted sample by sample (np.add.at) in float64: acc [M, C] is
    (correct + K * global) / (count + K) for a class with at least min_count samples (and one), else the
    model's global accuracy."""
    counts = np.zeros(num_classes)
    np.add.at(counts, labels, 1.0)
    correct = np.zeros((len(pred), num_classes))
    for m in range(len(pred)):
        np.add.at(correct[m], labels, (pred[m] == labels).astype(np.float64))
    global_acc = correct.sum(1) / len(labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        own = (correct + shrink * global_acc[:, None]) / (counts + shrink)
    return np.where(counts >= max(1, min_count), own, global_acc[:, None]), counts, global_acc


def float64_holdout_errors(probs: np.ndarray, labels: np.ndarray, held: np.ndarray, *, min_count: int,
                           grid: list[float], shrinks: tuple[float, ...] = (0.0,), scaling: str = "power",
                           rows_per_chunk: int = 1000) -> list[float]:
    """What `fit` should report as its held-out errors, in float64 numpy: per (shrink, grid value), in fit's order,
    the top-1 error on the held-out rows of sum_m w[m, c] * P_m[n, c], the weights from the float64 per-class
    accuracy of the other rows (`probs` [M, N, C], every row usable)."""
    arg = np.stack([p.argmax(1) for p in probs])
    weights = []
    for k in shrinks:
        acc, _, _ = float64_per_class_accuracy(arg[:, ~held], labels[~held], probs.shape[2], min_count, k)
        weights += [class_weights(acc, scaling, v) for v in grid]
    rows = np.flatnonzero(held)
    wrong = np.zeros(len(weights))
    for lo in range(0, len(rows), rows_per_chunk):
        idx = rows[lo:lo + rows_per_chunk]
        x = probs[:, idx].astype(np.float64)
        for j, w in enumerate(weights):
            wrong[j] += (np.einsum("mnc,mc->nc", x, w).argmax(1) != labels[idx]).sum()
    return (wrong / len(rows)).tolist()


def test_fit_in_chunks_equals_one_chunk_and_a_float64_reference(tmp_path):
    """5,003 classes, the rows read in many small chunks or in one: the same choice, the same weights, and
    held-out errors equal to float64 numpy's on the same candidates."""
    rng = np.random.default_rng(1)
    M, N, C = 3, 600, 5003
    labels = rng.integers(0, 120, N)
    probs = random_probs(rng, M, N, C)
    for m in range(M):  # each model right on about half of the images
        hit = rng.random(N) < 0.5
        probs[m, hit, labels[hit]] = 0.9
    preds = load_preds([write_preds(tmp_path / f"p{m}", probs[m], labels) for m in range(M)])
    small = 4 * (2 * M + 1) * C * 40  # 40 rows per held-out chunk, 93 per arg-max chunk
    chunked = fit(preds, labels, holdout=0.3, min_count=2, budget=small)
    whole = fit(preds, labels, holdout=0.3, min_count=2, budget=1 << 40)
    assert chunked["holdout_errors"] == whole["holdout_errors"] and chunked["value"] == whole["value"]
    np.testing.assert_array_equal(chunked["weights"], whole["weights"])

    held = stratified_holdout(labels, 0.3, seed=0)
    expected = float64_holdout_errors(probs, labels, held, min_count=2, grid=chunked["grid"])
    np.testing.assert_allclose(chunked["holdout_errors"], expected, rtol=0, atol=1e-12)
    assert len(set(expected)) > 1  # the grid values differ, so the check has teeth


PEAK_OF_FIT_AND_APPLY = """
import sys
from pathlib import Path
import numpy as np
from fastprod.score.ensemble import apply, fit, load_preds

def rss(key):
    return int(next(l.split()[1] for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))) << 10

def peak(run):
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    before = rss("VmRSS:")
    result = run()
    return rss("VmHWM:") - before, result

out, labels = Path(sys.argv[1]), np.load(sys.argv[2])
warm = load_preds(sys.argv[3:])  # torch's and numba's first-call costs, outside the measurement
apply(warm, fit(warm, labels, holdout=0.3, min_count=2)["weights"], out, save_probs=True, progress=False)
del warm  # unmapped: the measured runs start with none of the files' pages resident
preds = load_preds(sys.argv[3:])
fit_peak, result = peak(lambda: fit(preds, labels, holdout=0.3, min_count=2, budget=4 << 20))
print(fit_peak, peak(lambda: apply(preds, result["weights"], out, save_probs=True, progress=False, budget=4 << 20))[0])
"""


def test_fit_and_apply_hold_a_chunk_not_the_matrices(tmp_path):
    """Peak memory (a fresh process's VmHWM) of `fit` and of `apply --probs` over 2 models of [2000, 20,000]
    float16 (80 MB each) with a 4 MB chunk budget: a few chunks, not the memory-mapped files' pages they stream
    through (before `release_rows`: all of them, 160 MB; 240 MB for apply with its output) and never one
    model's [N, C] in float32 (160 MB)."""
    import subprocess
    import sys

    rng = np.random.default_rng(3)
    M, N, C = 2, 2000, 20_000
    labels = rng.integers(0, C, N)
    np.save(tmp_path / "labels.npy", labels)
    paths = []
    for m in range(M):
        mm = np.lib.format.open_memmap(tmp_path / f"p{m}.npy", mode="w+", dtype=np.float16, shape=(N, C))
        for lo in range(0, N, 100):
            mm[lo:lo + 100] = rng.random((100, C), dtype=np.float32)
        mm.flush()
        paths.append(str(tmp_path / f"p{m}.npy"))
        del mm
    out = subprocess.run([sys.executable, "-c", PEAK_OF_FIT_AND_APPLY, str(tmp_path / "out"),
                          str(tmp_path / "labels.npy"), *paths], capture_output=True, text=True, check=True)
    fit_peak, apply_peak = map(int, out.stdout.split())
    assert fit_peak < 60 << 20 and apply_peak < 60 << 20, (fit_peak >> 20, apply_peak >> 20)
    weights = fit(load_preds(paths), labels, holdout=0.3, min_count=2)["weights"]  # the same fit, here
    expected = sum(np.load(p).astype(np.float64) * w for p, w in zip(paths, weights))  # what apply wrote
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probs.npy"), expected, rtol=2e-3, atol=1e-4)


@pytest.fixture(scope="module")
def rare(tmp_path_factory):
    """AliProducts' validation shape at a tenth of its classes: 5,003 classes of 1-3 images each (random per
    class), 3 models' float16 score directories, and the models' arg-max classes. Model m picks the label of 80%
    of the images of the classes c with c % 3 == m and of 40% elsewhere (else a random other class), with 0.3-0.6
    on the class it picks over a background of under 1 / (2C) (drawn as float16 bit patterns: fast)."""
    rng = np.random.default_rng(11)
    M, C = 3, 5003
    labels = rng.permutation(np.repeat(np.arange(C), rng.integers(1, 4, C)))
    N = len(labels)
    top = np.float16(0.5 / C).view(np.uint16)
    probs = rng.integers(0, top, size=(M, N, C), dtype=np.uint16).view(np.float16)
    for m in range(M):
        hit = rng.random(N) < np.where(labels % M == m, 0.8, 0.4)
        picked = np.where(hit, labels, (labels + rng.integers(1, C, N)) % C)
        probs[m, np.arange(N), picked] = rng.uniform(0.3, 0.6, N)
    root = tmp_path_factory.mktemp("rare")
    paths = [write_preds(root / f"m{m}", probs[m], labels) for m in range(M)]
    return paths, probs, labels, np.stack([p.argmax(1) for p in probs])


def test_rare_classes_per_class_accuracy_falls_back_to_the_global_one(rare):
    _, probs, labels, arg = rare
    C = probs.shape[2]
    sizes = np.bincount(labels, minlength=C)
    assert set(sizes) == {1, 2, 3}
    for min_count in (1, 2, 3):
        for shrink in (0.0, 2.0):
            acc, counts, global_acc = per_class_accuracy(arg, labels, C, min_count, shrink)
            ref, ref_counts, ref_global = float64_per_class_accuracy(arg, labels, C, min_count, shrink)
            np.testing.assert_array_equal(counts, ref_counts)
            np.testing.assert_allclose(global_acc, ref_global, rtol=1e-12)
            np.testing.assert_allclose(acc, ref, rtol=1e-12)
            rare_classes = sizes < min_count
            np.testing.assert_array_equal(acc[:, rare_classes], np.repeat(ref_global[:, None], rare_classes.sum(), 1))
            assert rare_classes.any() == (min_count > 1)
    own = per_class_accuracy(arg, labels, C, 2)[0][:, sizes >= 2]
    assert set(np.unique(own)) == {0.0, 0.5, 1 / 3, 2 / 3, 1.0}  # two- and three-sample classes keep their own


def test_rare_classes_holdout_never_takes_a_class_only_image(rare):
    labels = rare[2]
    sizes = np.bincount(labels)
    for fraction in (0.3, 0.5):
        for seed in (0, 1):
            held = stratified_holdout(labels, fraction, seed)
            taken = np.bincount(labels[held], minlength=len(sizes))
            expected = np.where(sizes == 1, 0, np.rint(fraction * sizes))
            np.testing.assert_array_equal(taken, expected)
        assert (stratified_holdout(labels, fraction, 0) != held).any()  # the seed picks which images
    np.testing.assert_array_equal(held, stratified_holdout(labels, 0.5, 1))  # and the same seed the same ones
    held = stratified_holdout(labels, 0.9, 0)
    assert (np.bincount(labels[~held], minlength=len(sizes)) == 1).all()  # a large fraction: one image stays


def test_rare_classes_fit_matches_a_float64_reference(rare):
    paths, probs, labels, arg = rare
    grid, shrinks = (0.0, 2.0, 16.0), (0.0, 2.0)
    result = fit(load_preds(paths), labels, holdout=0.3, min_count=2, shrinks=shrinks, grid=grid)
    held = stratified_holdout(labels, 0.3, seed=0)
    expected = float64_holdout_errors(probs, labels, held, min_count=2, grid=list(grid), shrinks=shrinks)
    np.testing.assert_allclose(result["holdout_errors"], expected, rtol=0, atol=1e-12)
    assert len(set(expected)) > 2 and result["holdout_rows"] == held.sum()
    best = int(np.argmin(expected))
    assert (result["shrink"], result["value"]) == (shrinks[best // len(grid)], grid[best % len(grid)])
    acc, _, _ = float64_per_class_accuracy(arg, labels, probs.shape[2], 2, result["shrink"])
    np.testing.assert_allclose(result["acc"], acc, rtol=1e-12)
    np.testing.assert_allclose(result["weights"], class_weights(acc, "power", result["value"]), rtol=1e-6, atol=1e-7)


def test_nothing_held_out_reports_no_errors(tmp_path, capsys):
    """One image per class (or --holdout 0): no class can spare one, so nothing is held out. The held-out errors
    are unknown (NaN, as the single models'), not 0.0, which would read as a perfect ensemble; the first grid value
    (the plain average) is taken."""
    from fastprod.cli import main

    rng = np.random.default_rng(9)
    labels = np.arange(40)
    probs = random_probs(rng, 2, 40, 40)
    paths = [write_preds(tmp_path / f"m{m}", probs[m], labels) for m in range(2)]
    for holdout in (0.3, 0.0):
        result = fit(load_preds(paths), labels, holdout=holdout, min_count=1, progress=False)
        assert result["holdout_rows"] == 0 and np.isnan(result["holdout_errors"]).all()
        assert np.isnan(result["single_model_holdout_errors"]).all() and result["value"] == 0.0
        np.testing.assert_allclose(result["weights"], 0.5)
    assert main(["ensemble", "fit", "--preds", *map(str, paths), "--labels", str(paths[0]),
                 "--out", str(tmp_path / "w.npz"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["holdout_errors"] == [None] * 8  # null in the printed JSON

def test_rare_classes_apply_gives_the_float64_top1(rare, tmp_path):
    from fastprod.cli import main

    paths, probs, labels, arg = rare
    acc, _, _ = float64_per_class_accuracy(arg, labels, probs.shape[2], 2)
    weights = class_weights(acc, "power", 4.0).astype(np.float32)
    np.savez(tmp_path / "w.npz", weights=weights)
    assert main(["ensemble", "apply", "--weights", str(tmp_path / "w.npz"), "--preds", *map(str, paths),
                 "--out", str(tmp_path / "out"), "--threads", "2"]) == 0
    pred = pq.read_table(tmp_path / "out" / "predictions.parquet", columns=["pred"])["pred"].to_numpy()
    rows = np.sort(np.random.default_rng(0).choice(len(labels), 1000, replace=False))
    total = np.einsum("mnc,mc->nc", probs[:, rows].astype(np.float64), weights.astype(np.float64))
    np.testing.assert_array_equal(pred[rows], total.argmax(1))
    top2 = np.sort(total, 1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] > 1e-6).all()  # no near-tie that float32 sums could resolve otherwise
