"""TTA engines and batch scoring: every available backend agrees with eager, TTA averaging matches a
hand-built reference, snapshot engines average their members, scoring survives corrupt images and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fastprod.config import ModelConfig, load_config, save_config
from fastprod.data.augment import MEAN, STD
from fastprod.data.manifest import Manifest
from fastprod.models import create_model
from fastprod.score.calibration import calibration_views
from fastprod.score.engine import Engine, export_engine, snapshot_checkpoints
from fastprod.score.items import Items, items_from_manifest, items_from_paths
from fastprod.score.score import score
from fastprod.score.tta import Views, make_views
from synthetic_data import prepared_dataset

pytestmark = pytest.mark.e2e  # trains, launches processes or compiles

VIEWS = Views(32, (1.0, 1.3), ("center", "br", "tl"), (False, True))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread avoids intra-op barrier waits (10x here)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _random_weights(cfg: ModelConfig, num_classes: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = create_model(cfg, num_classes)
    for mod in model.modules():  # non-trivial BatchNorm statistics, so eval-mode outputs differ per input
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def make_run_dir(run: Path, manifest: Path) -> Path:
    """A run directory in the trainer's layout with random-init weights: final/model.pt and 2 snapshots."""
    cfg = load_config(None, [f"data.manifest={manifest}", "data.image_size=32", "model.name=resnet10t",
                             f"run.dir={run}"])
    save_config(cfg, run / "resolved.yaml")
    n = Manifest.load(manifest).num_classes
    for i, path in enumerate([run / "snapshots" / "cycle-0.pt", run / "snapshots" / "cycle-1.pt",
                              run / "final" / "model.pt"]):
        path.parent.mkdir(exist_ok=True)
        torch.save(_random_weights(cfg.model, n, i), path)
    return run


@pytest.fixture(scope="module")
def run_dir(manifest_dir, tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("score-run"), manifest_dir)


@pytest.fixture(scope="module")
def eager(run_dir, tmp_path_factory) -> Engine:
    return Engine(export_engine([run_dir / "final" / "model.pt"], tmp_path_factory.mktemp("e") / "eager",
                                backend="eager", views=VIEWS, max_batch=16), "cpu")


def _reference_probs(model: torch.nn.Module, image: Image.Image, views: Views) -> torch.Tensor:
    """Each view built with torchvision's own ops, run alone, softmaxed; the mean over views."""
    size, outs = views.image_size, []
    for scale, crop, flip in views:
        resized = v2.Resize(round(size * scale), antialias=True)(image)
        w, h = resized.size
        if crop == "center":
            view = F.center_crop(resized, [size, size])
        else:
            top = 0 if crop[0] == "t" else h - size
            left = 0 if crop[1] == "l" else w - size
            view = F.crop(resized, top, left, size, size)
        if flip:
            view = F.horizontal_flip(view)
        x = F.pil_to_tensor(view).float()[None] / 255
        x = F.normalize(x, list(MEAN), list(STD))
        with torch.no_grad():
            outs.append(model(x).softmax(-1)[0].double())
    return torch.stack(outs).mean(0)


def test_tta_average_matches_a_hand_built_reference(run_dir, manifest_dir, eager, tmp_path):
    every = items_from_manifest(manifest_dir, "val")
    items = Items(every.image_ids[::3], every.paths[::3], every.labels[::3])
    summary = score(eager, items, tmp_path / "pred", save_probs=True, batch=20, chunk=3, workers=0, progress=False)
    assert summary["images"] == len(items) and summary["failed"] == 0 and summary["views"] == 12
    probs = np.load(tmp_path / "pred" / "probs.npy")
    model = create_model(ModelConfig(name="resnet10t"), eager.num_classes).eval()
    model.load_state_dict(torch.load(run_dir / "final" / "model.pt"))
    table = pq.read_table(tmp_path / "pred" / "predictions.parquet").to_pylist()
    for j in (0, len(items) - 1):
        from fastprod.data.images import load_rgb

        ref = _reference_probs(model, load_rgb(items.paths[j]), VIEWS).numpy()
        np.testing.assert_allclose(probs[j].astype(np.float64), ref, atol=2e-3, rtol=1e-2)  # float16 storage
        assert table[j]["pred"] == int(ref.argmax()) and table[j]["topk_labels"][0] == int(ref.argmax())
        assert table[j]["image_id"] == items.image_ids[j] and table[j]["label"] == items.labels[j]


def _random_views(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", ["onnxruntime", "inductor"])
def test_engine_agrees_with_eager(backend, run_dir, eager, tmp_path):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="the onnx extra (pip install '.[onnx]') is not installed")
    engine = Engine(export_engine([run_dir / "final" / "model.pt"], tmp_path / backend, backend=backend, views=VIEWS,
                                  max_batch=16), "cpu")
    meta = json.loads((tmp_path / backend / "engine.json").read_text())
    assert meta["backend"] == backend and meta["views"] == VIEWS.to_json() and len(meta["class_ids"]) == 6
    for n in (1, 5, 40):  # dynamic batch, including more than max_batch (split into pieces)
        x = _random_views(n, n)
        got, ref = engine(x), eager(x)
        assert got.shape == ref.shape == (n, 6) and got.dtype == torch.float32
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_int8_onnxruntime_engine_tracks_eager_on_real_images(run_dir, manifest_dir, eager, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra (pip install '.[onnx]') is not installed")
    import onnx

    calibration = calibration_views([manifest_dir], "train", 12, VIEWS)
    assert calibration.dtype == torch.uint8 and calibration.shape == (12 * len(VIEWS), 3, 32, 32)
    engine = Engine(export_engine([run_dir / "final" / "model.pt"], tmp_path / "int8", backend="onnxruntime",
                                  precision="int8", views=VIEWS, max_batch=16, calibration=calibration), "cpu")
    assert engine.meta["precision"] == "int8" and engine.meta["calibration_views"] == len(calibration)
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    int8_weights = [t for t in graph.initializer if t.name in quantized and t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10  # every convolution's weights are stored as int8
    val = items_from_manifest(manifest_dir, "val")
    x = torch.cat([make_views(Image.open(p).convert("RGB"), VIEWS) for p in val.paths])
    got, ref = engine(x), eager(x)
    print(f"int8 vs fp32 eager: max |dp| {(got - ref).abs().max():.4f}, top-1 agreement "
          f"{(got.argmax(1) == ref.argmax(1)).float().mean():.3f}")
    assert (got - ref).abs().max() < 0.05 and (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    with pytest.raises(ValueError, match="needs calibration"):
        export_engine([run_dir / "final" / "model.pt"], tmp_path / "x", backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="onnxruntime only"):
        export_engine([run_dir / "final" / "model.pt"], tmp_path / "y", backend="eager", precision="int8",
                      calibration=calibration)


def test_bf16_eager_engine_is_close_to_fp32(run_dir, eager, tmp_path):
    engine = Engine(export_engine([run_dir / "final" / "model.pt"], tmp_path / "bf16", backend="eager",
                                  precision="bf16", views=VIEWS), "cpu")
    x = _random_views(8)
    torch.testing.assert_close(engine(x), eager(x), atol=3e-2, rtol=0)
    with pytest.raises(ValueError, match="fp16 is not supported on CPU"):
        export_engine([run_dir / "final" / "model.pt"], tmp_path / "fp16", backend="eager", precision="fp16")


@pytest.mark.gpu
def test_tensorrt_engine(run_dir, eager, tmp_path):
    try:
        import torch_tensorrt  # noqa: F401
    except (ImportError, OSError) as err:
        pytest.skip(f"TensorRT path needs torch_tensorrt with TensorRT libraries (the Dockerfile image); here: {err}")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT path needs a CUDA GPU")
    engine = Engine(export_engine([run_dir / "final" / "model.pt"], tmp_path / "trt", backend="tensorrt",
                                  precision="fp16", views=VIEWS, max_batch=16, device="cuda"), "cuda")
    x = _random_views(5)
    torch.testing.assert_close(engine(x), eager(x), atol=5e-3, rtol=0)


def test_snapshot_engine_averages_its_members(run_dir, tmp_path):
    snaps = snapshot_checkpoints(run_dir)
    assert [p.name for p in snaps] == ["cycle-0.pt", "cycle-1.pt"]
    both = Engine(export_engine(snaps, tmp_path / "snap", views=VIEWS), "cpu")
    ones = [Engine(export_engine([p], tmp_path / p.stem, views=VIEWS), "cpu") for p in snaps]
    x = _random_views(6)
    torch.testing.assert_close(both(x), (ones[0](x) + ones[1](x)) / 2, atol=1e-6, rtol=1e-5)
    assert len(both.meta["checkpoints"]) == 2


def test_score_survives_a_corrupt_image_and_resumes(manifest_dir, eager, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in items_from_manifest(manifest_dir, "val").paths[:9]:
        shutil.copy(path, images / Path(path).name)
    (images / "truncated.jpg").write_bytes((images / Path(path).name).read_bytes()[:200])
    (images / "empty.jpg").write_bytes(b"")
    items = items_from_paths([images])
    assert len(items) == 11
    full = score(eager, items, tmp_path / "full", save_probs=True, batch=12, chunk=3, workers=0, progress=False)
    assert full["failed"] == 2
    part = score(eager, items, tmp_path / "resumed", save_probs=True, batch=12, chunk=3, workers=0, progress=False,
                 stop_after_chunks=2)
    assert part == {"stopped_after_chunk": 2}
    assert json.loads((tmp_path / "resumed" / "progress.json").read_text()) == {"chunks_done": 2, "complete": False}
    assert not (tmp_path / "resumed" / "predictions.parquet").exists()
    resumed = score(eager, items, tmp_path / "resumed", save_probs=True, batch=12, chunk=3, workers=0, csv=True,
                    progress=False)
    assert resumed == full
    a = pq.read_table(tmp_path / "full" / "predictions.parquet").to_pylist()
    b = pq.read_table(tmp_path / "resumed" / "predictions.parquet").to_pylist()
    assert [r["image_id"] for r in a] == items.image_ids and len(b) == 11
    for ra, rb in zip(a, b):
        assert ra["ok"] == rb["ok"] and ra["topk_labels"] == rb["topk_labels"]
    bad = {r["image_id"]: r for r in a if not r["ok"]}
    assert set(bad) == {"truncated.jpg", "empty.jpg"}
    assert bad["empty.jpg"]["error"] == "zero-byte file" and bad["truncated.jpg"]["pred"] == -1
    pa_, pb = np.load(tmp_path / "full" / "probs.npy"), np.load(tmp_path / "resumed" / "probs.npy")
    np.testing.assert_array_equal(pa_, pb)
    rows = [items.image_ids.index(i) for i in bad]
    assert np.isnan(pa_[rows]).all() and np.isfinite(np.delete(pa_, rows, axis=0)).all()
    assert (tmp_path / "resumed" / "predictions.csv").read_text().count("\n") == 12
    with pytest.raises(FileExistsError, match="other inputs"):  # same --out, different options: refused
        score(eager, items, tmp_path / "full", topk=3, save_probs=True, chunk=3, workers=0, progress=False)


def test_export_and_score_commands(run_dir, manifest_dir, tmp_path):
    from fastprod.cli import main

    assert main(["export", "--snapshots", str(run_dir), "--out", str(tmp_path / "eng"), "--scales", "1.0", "1.14",
                 "--flip", "both", "--max-batch", "32"]) == 0
    meta = json.loads((tmp_path / "eng" / "engine.json").read_text())
    assert meta["views"] == {"image_size": 32, "scales": [1.0, 1.14], "crops": ["center"], "flips": [False, True]}
    assert main(["score", "--engine", str(tmp_path / "eng"), "--manifest", str(manifest_dir), "--out",
                 str(tmp_path / "pred"), "--workers", "0", "--topk", "3", "--no-progress", "--probs"]) == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["images"] == len(Manifest.load(manifest_dir).split("val")) and summary["top1_error"] is not None


def _one_error_line(capsys, command: str) -> str:
    """The single `fastprod COMMAND: error: ...` line a refused command prints to stderr (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith(f"fastprod {command}: error: "), err
    return err


def test_export_with_a_missing_checkpoint_leaves_out_alone(run_dir, tmp_path, capsys):
    from fastprod.cli import main

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    missing = run_dir / "final" / "missing.pt"
    assert main(["export", "--checkpoint", str(missing), "--out", str(victim)]) == 2
    assert str(missing) in _one_error_line(capsys, "export")
    assert (victim / "keep.txt").read_text() == "precious"


def test_export_refuses_an_out_that_is_not_an_engine(run_dir, tmp_path, capsys, monkeypatch):
    from fastprod.cli import main

    ckpt = str(run_dir / "final" / "model.pt")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    assert main(["export", "--checkpoint", ckpt, "--out", str(victim)]) == 2
    assert str(victim) in _one_error_line(capsys, "export")
    assert (victim / "keep.txt").read_text() == "precious"
    for flags in ([], ["--overwrite"]):  # --out . is the working directory: never replaced
        monkeypatch.chdir(victim)
        assert main(["export", "--checkpoint", ckpt, "--out", ".", *flags]) == 2
        assert "not a fastprod engine directory" in _one_error_line(capsys, "export")
        assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no temporary sibling left


def test_export_replaces_an_engine_only_with_overwrite(run_dir, tmp_path, capsys):
    from fastprod.cli import main

    ckpt, eng = str(run_dir / "final" / "model.pt"), tmp_path / "eng"
    assert main(["export", "--checkpoint", ckpt, "--out", str(eng)]) == 0
    first = (eng / "engine.json").read_text()
    assert main(["export", "--checkpoint", ckpt, "--out", str(eng), "--flip", "both"]) == 2
    assert "--overwrite" in _one_error_line(capsys, "export") and (eng / "engine.json").read_text() == first
    assert main(["export", "--checkpoint", ckpt, "--out", str(eng), "--flip", "both", "--overwrite"]) == 0
    assert json.loads((eng / "engine.json").read_text())["views"]["flips"] == [False, True]
    assert sorted(p.name for p in eng.iterdir()) == ["engine.json", "member-0.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"]  # the temporary and the old engine are gone
    replaced = (eng / "engine.json").read_text()
    try:
        import torch_tensorrt  # noqa: F401
        if torch.cuda.is_available():
            return  # the TensorRT export would succeed here: no failure to observe
    except (ImportError, OSError):
        pass
    with pytest.raises(RuntimeError, match="tensorrt"):  # fails while the new engine is being built
        export_engine([run_dir / "final" / "model.pt"], eng, backend="tensorrt", views=VIEWS, overwrite=True)
    assert (eng / "engine.json").read_text() == replaced and sorted(p.name for p in tmp_path.iterdir()) == ["eng"]


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory) -> Path:
    """A run trained on another dataset: synthetic classes 00000-00002, where manifest_dir has 00000-00005."""
    base = tmp_path_factory.mktemp("three")
    prepared = prepared_dataset(base, classes=3, train_images=30, val_per_class=2, seed=4)
    (base / "run").mkdir()
    return make_run_dir(base / "run", prepared)


def test_score_refuses_a_manifest_of_other_classes(three_class_run, manifest_dir, tmp_path, capsys):
    from fastprod.cli import main

    eng = tmp_path / "eng"
    assert main(["export", "--checkpoint", str(three_class_run / "final" / "model.pt"), "--out", str(eng)]) == 0
    args = ["score", "--engine", str(eng), "--manifest", str(manifest_dir), "--workers", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "pred")]) == 2
    err = _one_error_line(capsys, "score")
    assert str(eng) in err and str(manifest_dir) in err and "--shared-classes" in err
    assert not (tmp_path / "pred").exists()

    assert main([*args, "--out", str(tmp_path / "shared"), "--shared-classes"]) == 0
    manifest = Manifest.load(manifest_dir)
    val = manifest.split("val")
    engine_classes = json.loads((eng / "engine.json").read_text())["class_ids"]
    kept = [(p, engine_classes.index(manifest.class_ids[y])) for p, y in zip(val.paths, val.labels)
            if manifest.class_ids[y] in engine_classes]
    assert 0 < len(kept) < len(val)
    images = pq.read_table(tmp_path / "shared" / "images.parquet").to_pydict()
    assert list(zip(images["path"], images["label"])) == kept  # labels in the engine's label space
    assert f"{len(val) - len(kept)} of {len(val)}" in capsys.readouterr().out  # the images left out are reported
    assert json.loads((tmp_path / "shared" / "summary.json").read_text())["labelled"] == len(kept)

    assert main(["score", "--engine", str(eng), "--images", val.paths[0], "--out", str(tmp_path / "images"),
                 "--workers", "0", "--no-progress"]) == 0  # no labels: no class check


def test_export_never_unpickles_a_checkpoint(run_dir, tmp_path, capsys):
    """A weights file is data: a pickle that would run code is refused, and the code never runs."""
    import os

    from fastprod.cli import main

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'executed'}",)

    hostile = run_dir / "final" / "hostile.pt"
    torch.save({"fc.weight": Payload()}, hostile)
    try:
        assert main(["export", "--checkpoint", str(hostile), "--out", str(tmp_path / "eng")]) == 2
    finally:
        hostile.unlink()
    assert f"--checkpoint: {hostile} holds Python objects (GLOBAL " in _one_error_line(capsys, "export")
    assert not (tmp_path / "executed").exists() and not (tmp_path / "eng").exists()
