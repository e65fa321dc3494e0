"""Configuration as data: a dataclass tree loaded from YAML and overridden from the command line.

`load_config(path, overrides)` reads a YAML file into `Config`, applies `key.path=value` overrides
(values parsed as YAML scalars) and validates every field. Unknown keys and bad values raise
`ConfigError` naming the dotted key, so a typo never silently falls back to a default; every float
field must be finite (inf and nan are refused), and an override value that is not YAML is an error too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the dotted key."""


# SCE's A (RCE = -A (1 - p_y), the log the clamped one-hot label gives a zero; seed section 3): the official
# code clamps labels to [1e-4, 1], so A = ln(1e-4) = -9.21 (loss.sce_A's default); the paper's text uses -4.
A_OFFICIAL = math.log(1e-4)
A_PAPER = -4.0


@dataclass
class AugmentConfig:
    """The recipe's training augmentations (seed sections 1-2): random-sized crop, rotation,
    horizontal flip, perspective and cutout. A probability of 0 switches one off."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_degrees: float = 15.0
    rotation_p: float = 0.5
    hflip_p: float = 0.5
    perspective_distortion: float = 0.3
    perspective_p: float = 0.3
    cutout_p: float = 0.5
    cutout_scale: tuple[float, float] = (0.02, 0.2)

    def __post_init__(self) -> None:
        for name in ("rotation_p", "hflip_p", "perspective_p", "cutout_p"):
            _check(0.0 <= getattr(self, name) <= 1.0, name, "must be a probability in [0, 1]")
        for name in ("crop_scale", "cutout_scale"):
            lo, hi = getattr(self, name)
            _check(0.0 < lo <= hi <= 1.0, name, "must be (lo, hi) with 0 < lo <= hi <= 1")
        _check(0.0 <= self.perspective_distortion <= 1.0, "perspective_distortion", "must be in [0, 1]")


SAMPLERS = ("uniform", "sqrt", "balanced", "repeat_factor")


@dataclass
class DataConfig:
    """Where the prepared dataset lives and how batches are made."""

    manifest: str = ""  # directory written by `fastprod prepare`
    backend: str = "pil"  # a loader in fastprod/data/loaders/: pil; dali (GPU mixed decode or CPU); ffcv (.beton files)
    ffcv_dir: str = ""  # ffcv: directory of <split>.beton from `fastprod write-ffcv` (default: <manifest>/ffcv)
    image_size: int = 224
    eval_resize: float = 1.14  # eval: resize the short side to image_size * eval_resize, then center crop
    batch_size: int = 64  # per data-parallel rank
    eval_batch_size: int = 128
    workers: int = 4
    train_split: str = "train"
    val_split: str = "val"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # training draw per epoch (fastprod/data/sampler.py): uniform (each image once), sqrt (class frequency^0.5),
    # balanced (classes equally), repeat_factor (LVIS: r_c = max(1, sqrt(repeat_threshold / class fraction)))
    sampler: str = "uniform"
    repeat_threshold: float = 0.001  # LVIS's t: classes in fewer than 0.1% of the images are repeated
    # a run stops when more images of one pass over a split fail to load than either limit allows
    max_load_failures: int = 100
    max_load_failure_fraction: float = 0.01

    def __post_init__(self) -> None:
        _check(bool(self.manifest), "manifest", "is required (the --out directory of `fastprod prepare`)")
        _check(self.max_load_failures >= 0, "max_load_failures", "must be >= 0")
        _check(0.0 <= self.max_load_failure_fraction <= 1.0, "max_load_failure_fraction", "must be in [0, 1]")
        _check(self.image_size >= 16, "image_size", "must be >= 16")
        _check(self.eval_resize >= 1.0, "eval_resize", "must be >= 1")
        _check(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.workers >= 0, "workers", "must be >= 0")
        _check(self.sampler in SAMPLERS, "sampler", f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        _check(0.0 < self.repeat_threshold <= 1.0, "repeat_threshold", "must be in (0, 1] (a fraction of the images)")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelConfig:
    """A timm backbone with dropout after global pooling (seed section 2)."""

    name: str = "resnet34"
    pretrained_file: str | None = None  # local ImageNet weights (.pth/.safetensors); the head is re-initialised
    init_from: str | None = None  # all weights from a fastprod weights file (final/model.pt, snapshots/*.pt): finetuning
    drop_rate: float = 0.5
    channels_last: bool = True
    compile: bool = False  # torch.compile the backbone (off: slower than eager on the CPU, see the README)
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        _check(0.0 <= self.drop_rate < 1.0, "drop_rate", "must be in [0, 1)")
        _check(self.compile_mode in COMPILE_MODES, "compile_mode", f"must be one of {', '.join(COMPILE_MODES)}")


@dataclass
class OptimConfig:
    """SGD with momentum and weight decay 3e-4 (seed sections 1-2)."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    decay_norm_and_bias: bool = False
    grad_clip: float = 0.0  # max global grad norm; 0 disables

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", "must be > 0")
        _check(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass
class ScheduleConfig:
    """SGDR warm restarts stepped per iteration: first cycle `cycle_epochs`, each next one x `cycle_mult`."""

    epochs: int = 7
    cycle_epochs: int = 1
    cycle_mult: int = 2
    lr_min: float = 0.0
    max_steps: int = 0  # stop after this many optimizer steps in total (0: run all epochs); for smoke runs

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.cycle_epochs >= 1, "cycle_epochs", "must be >= 1")
        _check(self.cycle_mult >= 1, "cycle_mult", "must be >= 1")
        _check(self.lr_min >= 0, "lr_min", "must be >= 0")
        _check(self.max_steps >= 0, "max_steps", "must be >= 0")


@dataclass
class LossConfig:
    """The training loss: cross entropy or symmetric cross entropy (alpha * CE + beta * RCE,
    RCE = -A (1 - p_y); seed section 3), with optional label smoothing (seed section 2). Each name is one
    registered class in `fastprod.losses`, which refuses a name it does not know, or an impl (path) that
    does not implement the named loss.
    A defaults to ln(1e-4) = -9.21, what the official SCE code's label clamp gives (the paper's text: -4).
    beta defaults to 0.1 (the official CIFAR-100 setting): the SCE gradient is the CE gradient times
    (alpha + beta * (-A) * p_y), so beta = 1 with A = -9.21 multiplies the step by up to ~10x; on the
    ladder dataset it raised the error from 53.0% to 59.0%, beta = 0.1 lowered it to 51.5%."""

    name: str = "ce"  # a loss registered in fastprod/losses/ (ce, sce); checked by create_loss
    label_smoothing: float = 0.0
    sce_alpha: float = 1.0
    sce_beta: float = 0.1
    sce_A: float = A_OFFICIAL
    # fused: kernels/ row-wise loss over the logits (Triton on GPU, chunked torch on CPU); fused_linear: the
    # classifier head and the loss in one op that never holds the [B, C] logits (for 10^4-10^5 classes)
    impl: Literal["fused", "fused_linear", "reference"] = "reference"
    # logit adjustment (Menon et al., ICLR 2021): tau * log(training class prior) added to the logits inside the
    # loss (CE, label smoothing and SCE's RCE alike); 0: off, 1: balanced softmax (Ren et al., NeurIPS 2020)
    logit_adjust_tau: float = 0.0

    def __post_init__(self) -> None:
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        _check(self.logit_adjust_tau >= 0, "logit_adjust_tau", "must be >= 0 (0: off, 1: balanced softmax)")
        _check(self.sce_alpha >= 0 and self.sce_beta >= 0, "sce_alpha", "sce_alpha and sce_beta must be >= 0")
        _check(self.sce_A < 0, "sce_A", "must be negative (log of the clamped zero label)")


@dataclass
class O2UConfig:
    """O2U-style per-sample weights from the previous SGDR cycle's normalised loss (seed section 3)."""

    enabled: bool = False
    warmup_cycles: int = 1  # cycles trained with weight 1 before the scores are used
    temperature: float = 1.0  # of the sigmoid mapping standardised scores to weights
    per_class: bool = True  # score relative to the sample's class mean, so rare (hard) classes are not down-weighted

    def __post_init__(self) -> None:
        _check(self.warmup_cycles >= 1, "warmup_cycles", "must be >= 1 (the first cycle has no scores yet)")
        _check(self.temperature > 0, "temperature", "must be > 0")


@dataclass
class RunConfig:
    """Where a run writes, how it is checkpointed, and how DeepSpeed runs it."""

    dir: str = "runs/default"
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # auto: bf16 where the hardware has it natively
    zero_stage: int = 0
    ckpt_every_steps: int = 500
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    progress: bool = True
    max_skipped_in_a_row: int = 5  # consecutive non-finite steps after which the run stops with an error

    def __post_init__(self) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), "zero_stage", "must be 0, 1, 2 or 3")
        _check(self.ckpt_every_steps >= 1, "ckpt_every_steps", "must be >= 1")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        _check(self.log_every_steps >= 1, "log_every_steps", "must be >= 1")
        _check(self.max_skipped_in_a_row >= 1, "max_skipped_in_a_row", "must be >= 1")


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    o2u: O2UConfig = field(default_factory=O2UConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                return _coerce(value, arg, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf if value > 0 else -math.inf
        if not math.isfinite(number):  # an infinite LR trains to NaN weights and still exits 0
            raise ConfigError(f"{key}: must be a finite number, got {number}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}' (known here: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}.{err}" if prefix else str(err)) from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `a.b=value`; the value is read as a YAML scalar (so `0.1`, `true`, `[1, 2]` work), and one
    that is not YAML (`[1,`) is a ConfigError naming the key."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    if not raw.strip():
        return key, ""
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{key}: cannot parse {raw!r} as a YAML value ({problem})") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read `path` (YAML), apply `key=value` overrides, and return a validated Config."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    tree.setdefault("data", {})
    return _build(Config, tree)


def to_dict(config: Config) -> dict:
    """The resolved config as plain YAML-safe data (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(config))


# Keys a resumed run may change: how it reports, saves and feeds data, not what it computes.
# run.dir is where the saved config was found: a run directory may be moved or copied and resumed there.
RESUMABLE_CHANGES = frozenset({"run.dir", "run.progress", "run.ckpt_every_steps", "run.keep_checkpoints",
                               "run.log_every_steps", "data.workers", "data.eval_batch_size", "model.compile",
                               "model.compile_mode"})
# Keys holding paths: compared as resolved absolute paths ('runs/base' from /x is '/x/runs/base').
PATH_KEYS = frozenset({"data.manifest", "data.ffcv_dir", "model.init_from", "model.pretrained_file"})


def config_changes(previous: dict, config: Config) -> list[str]:
    """'key: old -> new' for every setting of `config` that differs from a saved resolved config (keys the
    saved one lacks, e.g. added by a newer fastprod, and RESUMABLE_CHANGES are not compared)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    def same(key: str, a: Any, b: Any) -> bool:
        if key in PATH_KEYS and isinstance(a, str) and isinstance(b, str) and a and b:
            return Path(a).resolve() == Path(b).resolve()
        return a == b

    old, new = flat(previous), flat(to_dict(config))
    return [f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in old
            if k not in RESUMABLE_CHANGES and k in new and not same(k, old[k], new[k])]


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
