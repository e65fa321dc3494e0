"""Scoring engines (seed section 5, multi-scale TTA and scoring): one or more trained models behind one
uint8-in, probabilities-out module, exported by a backend and loaded again for scoring.

    fastprod export --checkpoint CKPT [CKPT ...] | --snapshots RUN --out ENGINE_DIR [--overwrite]
                    [--backend eager|onnxruntime|inductor|tensorrt] [--precision fp32|bf16|fp16|int8]
                    [--scales 1.0 1.14 1.33] [--crops center tl tr bl br] [--flip none|both|only]
                    [--calibration DATASET_OR_IMAGES ...]   (int8: onnxruntime, see calibration.py)
                    [--logit-adjust TAU]

The exported graph (fastprod/score/graph.py) takes a uint8 [N, 3, S, S] batch of TTA views (N dynamic)
and returns float32 [N, C] class probabilities: normalisation, the network(s) and the softmax are inside
it, and with several checkpoints (a snapshot ensemble: `--snapshots RUN` takes RUN/snapshots/cycle-*.pt)
the members' probabilities are averaged inside the graph too, so decoding and view building are paid
once per image whatever the number of members.

`--logit-adjust TAU` adjusts for the long tail after training (Menon et al., ICLR 2021): each member's logits
minus TAU * log(prior) inside the graph, the prior being the run's training split class frequencies (tau = 1:
the balanced-error Bayes rule when the test classes are balanced, AliProducts' validation set is ~3 per class).

ENGINE_DIR/engine.json records the backend, precision, model config, class ids, views, member checkpoints and
the logit adjustment (tau and the training class counts); with the backend's artifact next to it, scoring needs nothing else. Each backend (its
precisions, its export and its load, and the artifact it writes) is one module of fastprod/score/backends/,
looked up here by name (the list: fastprod/score/backends/__init__.py).

Nothing at ENGINE_DIR changes until the new engine is complete: the weights files and the run's
config are checked first, the engine is built in a temporary sibling (.NAME.tmp-PID) and renamed
into place. An existing ENGINE_DIR must be an engine directory (engine.json; an empty directory is
also taken) and is replaced only with --overwrite; anything else, `.` included, is refused. A refused
or impossible request prints one line, `fastprod export: error: ...`, and exits 2 (`cli_errors`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fastprod.config import load_config
from fastprod.data.manifest import Manifest
from fastprod.score.backends import BACKENDS, PRECISIONS, backend_for
from fastprod.score.graph import DTYPES, build_module, logit_adjustment
from fastprod.score.tta import Views

ENGINE_JSON = "engine.json"


def cli_errors(command: str) -> Callable:
    """Decorate a sub-command's `func`: a refused or impossible request (a missing file, a mismatch, an
    unsafe --out: OSError or ValueError) prints one line `fastprod COMMAND: error: MESSAGE` to stderr and
    returns exit status 2, as argparse does for bad arguments, instead of a traceback."""
    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def run(args) -> int:
            try:
                return func(args)
            except (OSError, ValueError) as err:
                print(f"fastprod {command}: error: {' '.join(str(err).split())}", file=sys.stderr)
                return 2
        return run
    return decorate


def check_checkpoints(checkpoints: list[Path]) -> None:
    """Every weights file exists (checked before anything is written)."""
    for path in checkpoints:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {path}: no such file")


def find_run_config(checkpoint: Path) -> Path:
    """The resolved.yaml of the run a weights file belongs to (final/model.pt, snapshots/cycle-K.pt)."""
    for parent in list(checkpoint.resolve().parents)[:3]:
        if (parent / "resolved.yaml").is_file():
            return parent / "resolved.yaml"
    raise FileNotFoundError(f"no resolved.yaml next to or above {checkpoint} (is it a fastprod run's weights file?)")


def _manifest_dir(manifest: str, run_config: Path) -> Path:
    """The run's prepared dataset (`data.manifest`, relative to where training ran: tried from the run's ancestors)."""
    candidates = [Path(manifest)]
    if not Path(manifest).is_absolute():
        candidates += [p / manifest for p in run_config.parents]
    for directory in candidates:
        if (directory / "classes.json").is_file():
            return directory
    raise FileNotFoundError(f"{run_config}: data.manifest {manifest} has no classes.json (tried {candidates[:3]}...)")


def snapshot_checkpoints(run_dir: Path) -> list[Path]:
    paths = sorted((run_dir / "snapshots").glob("cycle-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise FileNotFoundError(f"{run_dir}/snapshots holds no cycle-*.pt (was the run trained with SGDR cycles?)")
    return paths


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing `out` that is not an engine directory (an empty directory is taken), and an
    engine directory unless `overwrite`."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / ENGINE_JSON).is_file():
        raise FileExistsError(f"--out {out} exists and is not a fastprod engine directory (no {ENGINE_JSON}); "
                              f"choose another --out")
    if not overwrite:
        raise FileExistsError(f"--out {out} already holds an engine; pass --overwrite to replace it")


def _move_into_place(new: Path, out: Path) -> None:
    """Rename the finished engine `new` to `out`; an engine already there is renamed aside first (and put
    back if the rename fails), then removed."""
    if not (out / ENGINE_JSON).is_file():
        os.replace(new, out)  # `out` is absent or an empty directory
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def export_engine(checkpoints: list[Path], out: Path, *, backend: str = "eager", precision: str = "fp32",
                  views: Views | None = None, max_batch: int = 256, device: str = "cpu",
                  calibration: torch.Tensor | None = None, overwrite: bool = False, logit_adjust: float = 0.0) -> Path:
    """Write ENGINE_DIR for `checkpoints` (all of one run's architecture and classes); int8 needs
    `calibration`, uint8 views of real images (`calibration.calibration_views`).

    The guarantee of the module docstring: every input is checked and the members are loaded before
    anything is written; the engine is built in a temporary sibling of `out` and renamed into place only
    when complete (the temporary is removed if the build fails); an existing `out` must be an engine
    directory and is replaced only with `overwrite`. `logit_adjust` tau > 0: post-hoc logit adjustment, the
    prior being the run's training split (its class counts are stored in engine.json)."""
    exporter = backend_for(backend, precision, device)
    if precision == "int8" and calibration is None:
        raise ValueError("--precision int8 needs calibration images (--calibration DATASET_OR_IMAGES)")
    checkpoints = [Path(p) for p in checkpoints]
    check_checkpoints(checkpoints)
    run_config = find_run_config(checkpoints[0])
    cfg = load_config(run_config)
    manifest = _manifest_dir(cfg.data.manifest, run_config)
    class_ids = list(json.loads((manifest / "classes.json").read_text())["class_ids"])
    if not (logit_adjust >= 0 and math.isfinite(logit_adjust)):
        raise ValueError(f"--logit-adjust: must be a finite tau >= 0 (got {logit_adjust})")
    views = views or Views(cfg.data.image_size, (cfg.data.eval_resize,))
    target = Path(os.path.abspath(out))  # `.` and `..` get a name: the temporary sibling needs one
    _check_out(target, overwrite)
    meta = {
        "backend": backend, "precision": precision, "model": asdict(cfg.model), "num_classes": len(class_ids),
        "class_ids": class_ids, "views": views.to_json(), "checkpoints": [str(p.resolve()) for p in checkpoints],
        "run_config": str(run_config.resolve()), "max_batch": max_batch, "input": "uint8 [N, 3, S, S] RGB 0-255",
        "output": "float32 [N, C] probabilities (mean over members)",
    }
    if logit_adjust:
        labels = Manifest.load(manifest).split(cfg.data.train_split).labels
        meta["logit_adjust"] = {"tau": logit_adjust, "prior": f"{manifest} {cfg.data.train_split}",
                                "train_class_counts": np.bincount(labels, minlength=len(class_ids)).tolist()}
    module = build_module(cfg.model, len(class_ids), checkpoints, DTYPES.get(precision, torch.float32),
                          logit_offset=logit_adjustment(meta))
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        meta["artifact"] = exporter.export(module, views, tmp, checkpoints=checkpoints, max_batch=max_batch,
                                           device=device, precision=precision, calibration=calibration)
        if precision == "int8":
            meta["calibration_views"] = len(calibration)
        (tmp / ENGINE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        _move_into_place(tmp, target)
    finally:
        if tmp.exists():  # the build failed: its remains go
            shutil.rmtree(tmp)
    return Path(out)


class Engine:
    """A loaded ENGINE_DIR: `engine(views_uint8) -> float32 [N, C]` probabilities on the CPU."""

    def __init__(self, directory: str | Path, device: str | None = None) -> None:
        self.dir = Path(directory)
        if not (self.dir / ENGINE_JSON).is_file():
            raise FileNotFoundError(f"{self.dir} is not an engine directory (no {ENGINE_JSON}; run `fastprod export`)")
        self.meta = json.loads((self.dir / ENGINE_JSON).read_text())
        self.backend, self.precision = self.meta["backend"], self.meta["precision"]
        self.views = Views.from_json(self.meta["views"])
        self.class_ids = self.meta["class_ids"]
        self.max_batch = int(self.meta["max_batch"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.backend not in BACKENDS:
            raise ValueError(f"{self.dir / ENGINE_JSON}: backend {self.backend!r} is not one of {tuple(BACKENDS)}")
        self._run = BACKENDS[self.backend].load(self.dir, self.meta, self.device)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] -> float32 [N, C] on the CPU, run in pieces of at most max_batch."""
        outs = []
        for piece in x.split(self.max_batch):
            outs.append(self._run(piece).float().cpu())
        return torch.cat(outs)


@cli_errors("export")
def run(args) -> int:
    from fastprod.score.tta import parse_views

    checkpoints = list(args.checkpoint or [])
    if args.snapshots:
        checkpoints += snapshot_checkpoints(Path(args.snapshots))
    if not checkpoints:
        raise ValueError("give --checkpoint CKPT [CKPT ...] or --snapshots RUN")
    check_checkpoints(checkpoints)
    cfg = load_config(find_run_config(Path(checkpoints[0])))
    views = parse_views(args.image_size or cfg.data.image_size, args.scales or [cfg.data.eval_resize], args.crops,
                        args.flip)
    calibration = None
    if args.calibration and args.precision != "int8":
        raise ValueError("--calibration is for --precision int8")
    if args.calibration:
        from fastprod.score.calibration import calibration_views

        calibration = calibration_views(args.calibration, args.calibration_split, args.calibration_images, views)
    out = export_engine(checkpoints, Path(args.out), backend=args.backend, precision=args.precision, views=views,
                        max_batch=args.max_batch, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                        calibration=calibration, overwrite=args.overwrite, logit_adjust=args.logit_adjust)
    print(f"engine: {out} ({args.backend}, {args.precision}, {len(checkpoints)} member(s), {len(views)} views)")
    return 0


def register(subparsers) -> None:
    from fastprod.score.tta import CROPS

    p = subparsers.add_parser("export", help="export trained weights as a TTA scoring engine")
    p.add_argument("--checkpoint", nargs="+", type=Path, help="weights files (final/model.pt, snapshots/cycle-K.pt)")
    p.add_argument("--snapshots", type=Path, help="a run directory: every SGDR snapshot becomes an ensemble member")
    p.add_argument("--out", required=True, type=Path, help="ENGINE_DIR to write (a new or empty directory)")
    p.add_argument("--overwrite", action="store_true", help="replace the engine already at --out")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="eager")
    int8 = " or ".join(name for name, backend in BACKENDS.items() if "int8" in backend.precisions)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=f"int8: {int8}, with --calibration")
    p.add_argument("--calibration", nargs="+", help="int8: a prepared dataset, or image files/folders, to calibrate on")
    p.add_argument("--calibration-split", default="train", help="with a prepared dataset: the split to draw from")
    p.add_argument("--calibration-images", type=int, default=128, help="images drawn for calibration (all their views)")
    p.add_argument("--image-size", type=int, default=None, help="view size (default: the run's data.image_size)")
    p.add_argument("--scales", type=float, nargs="+", help="short side = image_size * scale (default: data.eval_resize)")
    p.add_argument("--crops", nargs="+", choices=CROPS, help="crop positions per scale (default: center)")
    p.add_argument("--flip", choices=("none", "both", "only"), default="none", help="horizontal mirror views")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch of views the engine accepts")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--logit-adjust", type=float, default=0.0, metavar="TAU",
                   help="post-hoc logit adjustment: logits - TAU log(training class prior) (Menon et al. 2021)")
    p.set_defaults(func=run)
