"""Scoring engines: one or more trained models behind one uint8-in, probabilities-out module.

    fastprod export --checkpoint CKPT [CKPT ...] | --snapshots RUN --out ENGINE_DIR [--overwrite]
                    [--backend eager|onnxruntime|inductor|tensorrt] [--precision fp32|bf16|fp16|int8]
                    [--scales 1.0 1.14 1.33] [--crops center tl tr bl br] [--flip none|both|only]
                    [--calibration DATASET_OR_IMAGES ...]   (int8: onnxruntime, see quantize.py)

The exported graph takes a uint8 [N, 3, S, S] batch of TTA views (N dynamic) and returns float32
[N, C] class probabilities: normalisation, the network(s) and the softmax are inside it, and with
several checkpoints (a snapshot ensemble: `--snapshots RUN` takes RUN/snapshots/cycle-*.pt) the
members' probabilities are averaged inside the graph too, so decoding and view building are paid
once per image whatever the number of members.

ENGINE_DIR/engine.json records the backend, precision, model config, class ids, views and member
checkpoints; with the backend's artifact next to it, scoring needs nothing else:
    eager        member-K.pt state dicts, rebuilt with `create_model` (the reference)
    onnxruntime  model.onnx from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), fp32, or
                 int8 after static quantisation calibrated on real views (fastprod/score/quantize.py)
    inductor     model.pt2, an AOTInductor package compiled ahead of time (loads without compiling)
    tensorrt     model.ep, a torch_tensorrt-compiled ExportedProgram (needs TensorRT and a GPU)

Nothing at ENGINE_DIR changes until the new engine is complete: the weights files and the run's
config are checked first, the engine is built in a temporary sibling (.NAME.tmp-PID) and renamed
into place. An existing ENGINE_DIR must be an engine directory (engine.json; an empty directory is
also taken) and is replaced only with --overwrite; anything else, `.` included, is refused. A refused
or impossible request prints one line, `fastprod export: error: ...`, and exits 2 (`cli_errors`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from fastprod.config import ModelConfig, load_config
from fastprod.data.augment import MEAN, STD
from fastprod.models import create_model, load_weights
from fastprod.score.tta import Views

BACKENDS = ("eager", "onnxruntime", "inductor", "tensorrt")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = (*DTYPES, "int8")
ENGINE_JSON = "engine.json"


class ScoringModule(torch.nn.Module):
    """uint8 [N, 3, S, S] -> mean over members of softmax(member(normalise(x))), float32 [N, C]."""

    def __init__(self, members: list[torch.nn.Module], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float() - self.mean) * self.inv_std).to(self.dtype)
        probs = [m(x).float().softmax(-1) for m in self.members]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


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


def _class_ids(manifest: str, run_config: Path) -> list[str]:
    candidates = [Path(manifest)]
    if not Path(manifest).is_absolute():  # relative to where training ran: try the run's ancestors
        candidates += [p / manifest for p in run_config.parents]
    for directory in candidates:
        if (directory / "classes.json").is_file():
            return list(json.loads((directory / "classes.json").read_text())["class_ids"])
    raise FileNotFoundError(f"{run_config}: data.manifest {manifest} has no classes.json (tried {candidates[:3]}...)")


def snapshot_checkpoints(run_dir: Path) -> list[Path]:
    paths = sorted((run_dir / "snapshots").glob("cycle-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise FileNotFoundError(f"{run_dir}/snapshots holds no cycle-*.pt (was the run trained with SGDR cycles?)")
    return paths


def build_module(model_cfg: ModelConfig, num_classes: int, checkpoints: list[Path], dtype: torch.dtype,
                 key: str = "--checkpoint") -> ScoringModule:
    """The members' weights (read as plain tensors only; `key` names their source in errors) behind one module."""
    members = []
    for path in checkpoints:
        model = create_model(ModelConfig(**{**asdict(model_cfg), "pretrained_file": None, "init_from": None}), num_classes)
        load_weights(model, Path(path), key)
        members.append(model.eval())
    return ScoringModule(members, dtype).eval().to(dtype)


def _example(views: Views, batch: int, device: str = "cpu") -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, views.image_size, views.image_size), dtype=torch.uint8, device=device)


def _check_precision(backend: str, precision: str, device: str) -> None:
    if precision == "fp16" and device == "cpu" and backend != "tensorrt":
        raise ValueError("--precision fp16 is not supported on CPU (use bf16 or fp32)")
    if backend == "onnxruntime" and precision not in ("fp32", "int8"):
        raise ValueError("--backend onnxruntime exports fp32 or int8 (its CPU kernels have no bf16/fp16 convolutions)")
    if precision == "int8" and backend != "onnxruntime":
        raise ValueError("--precision int8 is implemented for --backend onnxruntime only")


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
                  calibration: torch.Tensor | None = None, overwrite: bool = False) -> Path:
    """Write ENGINE_DIR for `checkpoints` (all of one run's architecture and classes); int8 needs
    `calibration`, uint8 views of real images (`quantize.calibration_views`).

    The guarantee of the module docstring: every input is checked and the members are loaded before
    anything is written; the engine is built in a temporary sibling of `out` and renamed into place only
    when complete (the temporary is removed if the build fails); an existing `out` must be an engine
    directory and is replaced only with `overwrite`."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend: {backend!r} is not one of {BACKENDS}")
    _check_precision(backend, precision, device)
    if precision == "int8" and calibration is None:
        raise ValueError("--precision int8 needs calibration images (--calibration DATASET_OR_IMAGES)")
    checkpoints = [Path(p) for p in checkpoints]
    check_checkpoints(checkpoints)
    run_config = find_run_config(checkpoints[0])
    cfg = load_config(run_config)
    class_ids = _class_ids(cfg.data.manifest, run_config)
    views = views or Views(cfg.data.image_size, (cfg.data.eval_resize,))
    target = Path(os.path.abspath(out))  # `.` and `..` get a name: the temporary sibling needs one
    _check_out(target, overwrite)
    meta = {
        "backend": backend, "precision": precision, "model": asdict(cfg.model), "num_classes": len(class_ids),
        "class_ids": class_ids, "views": views.to_json(), "checkpoints": [str(p.resolve()) for p in checkpoints],
        "run_config": str(run_config.resolve()), "max_batch": max_batch, "input": "uint8 [N, 3, S, S] RGB 0-255",
        "output": "float32 [N, C] probabilities (mean over members)",
    }
    module = build_module(cfg.model, len(class_ids), checkpoints, DTYPES.get(precision, torch.float32))
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if backend == "eager":
            for i, p in enumerate(checkpoints):
                shutil.copyfile(p, tmp / f"member-{i}.pt")
            meta["artifact"] = [f"member-{i}.pt" for i in range(len(checkpoints))]
        elif backend == "onnxruntime" and precision == "int8":
            from fastprod.score.quantize import quantize_onnx

            fp32 = tmp / _export_onnx(module, views, tmp / "model-fp32.onnx", max_batch)
            quantize_onnx(fp32, tmp / "model.onnx", calibration)
            fp32.unlink()
            meta["artifact"], meta["calibration_views"] = "model.onnx", len(calibration)
        elif backend == "onnxruntime":
            meta["artifact"] = _export_onnx(module, views, tmp / "model.onnx", max_batch)
        elif backend == "inductor":
            meta["artifact"] = _export_inductor(module, views, tmp / "model.pt2", max_batch, device)
        else:
            meta["artifact"] = _export_tensorrt(module, views, tmp / "model.ep", max_batch, precision)
        (tmp / ENGINE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        _move_into_place(tmp, target)
    finally:
        if tmp.exists():  # the build failed: its remains go
            shutil.rmtree(tmp)
    return Path(out)


def _batch_dim(max_batch: int):
    return torch.export.Dim("batch", min=1, max=max_batch)


def _export_onnx(module: ScoringModule, views: Views, path: Path, max_batch: int) -> str:
    program = torch.onnx.export(module, (_example(views, 2),), dynamo=True, input_names=["views"],
                                output_names=["probs"], dynamic_shapes=({0: _batch_dim(max_batch)},),
                                optimize=True, verbose=False)
    program.save(str(path), external_data=False)
    return path.name


def _export_inductor(module: ScoringModule, views: Views, path: Path, max_batch: int, device: str) -> str:
    module = module.to(device)
    if device == "cpu":
        module = module.to(memory_format=torch.channels_last)
    with torch.no_grad():
        program = torch.export.export(module, (_example(views, 2, device),),
                                      dynamic_shapes=({0: _batch_dim(max_batch)},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path.name


def _export_tensorrt(module: ScoringModule, views: Views, path: Path, max_batch: int, precision: str) -> str:
    try:
        import torch_tensorrt
    except (ImportError, OSError) as err:  # OSError: the wheel without its TensorRT libraries (libnvinfer)
        raise RuntimeError(f"--backend tensorrt needs torch_tensorrt with TensorRT (pip install '.[tensorrt]' on a "
                           f"CUDA machine): {err}") from None
    if not torch.cuda.is_available():
        raise RuntimeError("--backend tensorrt needs a CUDA GPU")
    module = module.float().cuda()  # TensorRT picks kernels per layer within enabled_precisions
    opt = min(64, max_batch)
    inputs = [torch_tensorrt.Input(min_shape=(1, 3, views.image_size, views.image_size),
                                   opt_shape=(opt, 3, views.image_size, views.image_size),
                                   max_shape=(max_batch, 3, views.image_size, views.image_size), dtype=torch.uint8)]
    trt = torch_tensorrt.compile(module, ir="dynamo", inputs=inputs, enabled_precisions={DTYPES[precision]},
                                 truncate_double=True)
    torch_tensorrt.save(trt, str(path), output_format="exported_program", inputs=[_example(views, opt, "cuda")])
    return path.name


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
        self._run = getattr(self, f"_load_{self.backend}")()

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def _load_eager(self):
        model_cfg = ModelConfig(**self.meta["model"])
        module = build_module(model_cfg, self.num_classes, [self.dir / a for a in self.meta["artifact"]],
                              DTYPES[self.precision], key=f"engine {self.dir}").to(self.device)
        if self.device.type == "cpu" or model_cfg.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def _load_onnxruntime(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(self.dir / self.meta["artifact"]), options, providers=providers)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"views": x.cpu().numpy()})[0])
        return run

    def _load_inductor(self):
        return torch._inductor.aoti_load_package(str(self.dir / self.meta["artifact"]))

    def _load_tensorrt(self):
        import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops the program calls)

        return torch.export.load(str(self.dir / self.meta["artifact"])).module()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] -> float32 [N, C] on the CPU, run in pieces of at most max_batch."""
        outs = []
        for piece in x.split(self.max_batch):
            if self.backend != "onnxruntime":
                piece = piece.to(self.device, non_blocking=True)
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
                        calibration=calibration, overwrite=args.overwrite)
    print(f"engine: {out} ({args.backend}, {args.precision}, {len(checkpoints)} member(s), {len(views)} views)")
    return 0


def register(subparsers) -> None:
    from fastprod.score.tta import CROPS

    p = subparsers.add_parser("export", help="export trained weights as a TTA scoring engine")
    p.add_argument("--checkpoint", nargs="+", type=Path, help="weights files (final/model.pt, snapshots/cycle-K.pt)")
    p.add_argument("--snapshots", type=Path, help="a run directory: every SGDR snapshot becomes an ensemble member")
    p.add_argument("--out", required=True, type=Path, help="ENGINE_DIR to write (a new or empty directory)")
    p.add_argument("--overwrite", action="store_true", help="replace the engine already at --out")
    p.add_argument("--backend", choices=BACKENDS, default="eager")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="int8: onnxruntime, with --calibration")
    p.add_argument("--calibration", nargs="+", help="int8: a prepared dataset, or image files/folders, to calibrate on")
    p.add_argument("--calibration-split", default="train", help="with a prepared dataset: the split to draw from")
    p.add_argument("--calibration-images", type=int, default=128, help="images drawn for calibration (all their views)")
    p.add_argument("--image-size", type=int, default=None, help="view size (default: the run's data.image_size)")
    p.add_argument("--scales", type=float, nargs="+", help="short side = image_size * scale (default: data.eval_resize)")
    p.add_argument("--crops", nargs="+", choices=CROPS, help="crop positions per scale (default: center)")
    p.add_argument("--flip", choices=("none", "both", "only"), default="none", help="horizontal mirror views")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch of views the engine accepts")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)
