"""The training loop, in the order of the recipe (seed section 1): a timm backbone trained by SGD
with SGDR warm restarts through a DeepSpeed engine, snapshots at cycle ends, validation each epoch.

`Trainer.fit()` resumes from the newest intact checkpoint of the run directory if there is one,
mid-epoch, and ends with `summary.json` holding the final validation top-1 error. A step is forward, loss,
backward and optimizer step; what follows it is a list of named hooks (metrics on log steps, O2U's epoch end,
SGDR's cycle end with its snapshot, the checkpoint). The step waits on the host once, for the non-finite check
folded into one collective with the stop and load-failure counts (on the CPU this costs nothing measurable:
execution is synchronous anyway); the loss is read only on log steps (`run.log_every_steps`). A run never reports
success for work it did not do: it holds an exclusive lock on its directory, refuses a dataset whose
images are not there, and stops with a `RunError` when more images fail to load than `data.max_load_failures`
/ `data.max_load_failure_fraction` allow or when `run.max_skipped_in_a_row` steps in a row are not finite.
"""

from __future__ import annotations

import json
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import deepspeed
import numpy as np
import torch
import yaml
from torch.profiler import record_function
from tqdm import tqdm

from fastprod.config import Config, ConfigError, config_changes, save_config
from fastprod.data.loaders import Batch, create_loader
from fastprod.data.manifest import Manifest, SplitView
from fastprod.losses import LossOutput, create_loss
from fastprod.files import write_json
from fastprod.models import create_model
from fastprod.optim import create_optimizer
from fastprod.schedule import SGDR
from fastprod.train.checkpoint import Checkpointer
from fastprod.train.distributed import Dist, all_reduce
from fastprod.train.errors import RunError
from fastprod.train.evaluate import SHOT_GROUPS, evaluate
from fastprod.train.lock import RunLock
from fastprod.train.metrics import MetricsLogger, StepMeter
from fastprod.train.perf import peak_flops, peak_memory_gib, training_flops_per_image
from fastprod.train.sample_weights import SampleWeights

AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`run.precision: auto`: bf16 autocast where the hardware multiplies in bf16 natively (a CUDA GPU with bf16;
    a CPU with AVX512-BF16 or AMX, through oneDNN: 1.5-1.7x fp32 for resnet18 on such a CPU, while on one without
    them bf16 is emulated and 10-25x slower), else fp32. Other values are returned as they are."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"


def deepspeed_config(cfg: Config, precision: str) -> dict:
    """The DeepSpeed side of the run config: micro-batch, ZeRO stage, clipping, mixed precision (`precision`
    resolved, see `resolve_precision`)."""
    ds: dict = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.run.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        # always explicit: DeepSpeed's default is to clip at norm 1.0, which optim.grad_clip = 0 must not do
        "gradient_clipping": cfg.optim.grad_clip,
    }
    if precision in AUTOCAST_DTYPES:
        # torch.autocast keeps fp32 master weights and BatchNorm in fp32 (DeepSpeed's bf16/fp16
        # modes cast the whole model, which BatchNorm does not survive); fp16 adds a GradScaler.
        ds["torch_autocast"] = {"enabled": True, "dtype": AUTOCAST_DTYPES[precision]}
    return ds


def _refuse_a_different_run(cfg: Config, run_dir: Path) -> None:
    """A run directory with a checkpoint resumes only under the settings it was trained with; otherwise
    the command would quietly continue (or report as complete) a run that is not the one asked for."""
    previous = run_dir / "resolved.yaml"
    if previous.is_file() and any((run_dir / "checkpoints").glob("step-*")):
        changes = config_changes(yaml.safe_load(previous.read_text()) or {}, cfg)
        if changes:
            raise ConfigError(f"run.dir {run_dir} holds a run trained with other settings ({'; '.join(changes)}): "
                              f"resume it with its own settings, or set another run.dir")


class Trainer:
    """`sample_weights` builds per-sample loss weights computed from the training (O2U) for the number of
    training samples; the recipe stage passes it (`fastprod.recipe.train.create_trainer`), and a config asking
    for O2U without it is refused."""

    def __init__(self, cfg: Config, dist: Dist,
                 sample_weights: Callable[[int, torch.device], SampleWeights] | None = None) -> None:
        if dist.device.type == "cpu" and cfg.run.precision == "fp16":
            raise ConfigError("run.precision: fp16 is not supported on CPU (use bf16 or fp32)")
        if cfg.o2u.enabled and sample_weights is None:
            raise ConfigError("o2u.enabled: O2U weights are attached by the recipe's trainer "
                              "(fastprod.recipe.train.create_trainer), not by a bare Trainer")
        self.cfg, self.dist = cfg, dist
        self.precision = resolve_precision(cfg.run.precision, dist.device)
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.run_dir, dist)
        _refuse_a_different_run(cfg, self.run_dir)
        if dist.is_main:
            save_config(cfg, self.run_dir / "resolved.yaml")
        torch.manual_seed(cfg.run.seed)

        self.manifest = Manifest.load(cfg.data.manifest)
        for split in (cfg.data.train_split, cfg.data.val_split):
            self.manifest.check_images(split)
        model = create_model(cfg.model, self.manifest.num_classes).to(dist.device)
        optimizer = create_optimizer(model, cfg.optim)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, self.precision)
        )
        if dist.world == 1:
            # one rank: DeepSpeed's gradient all-reduce is an identity that still copies every gradient through a
            # flat buffer (~9% of a resnet18 step on 2 CPU cores)
            self.engine.enable_backward_allreduce = False
        if cfg.model.channels_last and cfg.run.zero_stage == 0:
            # NHWC weights and activations (1.3x on CPU for resnet18, more on tensor cores). Only after
            # initialize: DeepSpeed broadcasts parameters as contiguous bytes. ZeRO>=1 keeps parameters
            # as views of flat buffers, so there only the inputs are channels_last.
            self.engine.module.to(memory_format=torch.channels_last)
        self.flops_per_image = training_flops_per_image(self.engine.module, cfg.data.image_size, dist.device,
                                                        cfg.model.channels_last)
        self.peak_flops = peak_flops(dist.device, self.precision)
        loader_args = dict(
            rank=dist.rank, world=dist.world, seed=cfg.run.seed, device=dist.device,
            channels_last=cfg.model.channels_last, quarantine_log=self.run_dir / "quarantine_runtime.jsonl",
        )
        self.train_split = self.manifest.split(cfg.data.train_split)
        self.train_class_sizes = np.bincount(self.train_split.labels, minlength=self.manifest.num_classes)
        self.train_loader = create_loader(self.train_split, cfg.data, train=True, **loader_args)
        self.val_loader = create_loader(self.manifest.split(cfg.data.val_split), cfg.data, train=False, **loader_args)

        self.iters_per_epoch = len(self.train_loader)
        if self.iters_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: {cfg.data.batch_size} x {dist.world} ranks exceeds the "
                f"{len(self.manifest.split(cfg.data.train_split))} training images"
            )
        self.loss_fn = create_loss(cfg.loss, inplace_backward=True,  # nothing reads the logits after the loss
                                   class_prior=torch.as_tensor(self.train_class_sizes, device=dist.device))
        self.fused_head = cfg.loss.impl == "fused_linear"
        if self.fused_head:
            if cfg.run.zero_stage == 3:
                raise ConfigError("loss.impl: fused_linear reads the head weight directly, which ZeRO-3 partitions; "
                                  "use zero_stage <= 2 or impl fused")
            if not isinstance(self.engine.module.get_classifier(), torch.nn.Linear):
                raise ConfigError(f"loss.impl: fused_linear needs a Linear classifier; {cfg.model.name} has "
                                  f"{type(self.engine.module.get_classifier()).__name__}")
        self.features = self._features
        if cfg.model.compile:
            self.engine.module.compile(mode=cfg.model.compile_mode)  # parameters and state_dict keys unchanged
            self.features = torch.compile(self._features, mode=cfg.model.compile_mode)
        self.sample_weights = sample_weights(len(self.train_split), dist.device) if sample_weights else None
        self.sgdr = SGDR(cfg.schedule, cfg.optim.lr, self.iters_per_epoch)
        self.total_steps = cfg.schedule.epochs * self.iters_per_epoch
        if cfg.schedule.max_steps:
            self.total_steps = min(self.total_steps, cfg.schedule.max_steps)
        self.checkpointer = Checkpointer(self.engine, self.run_dir, dist, cfg.run.keep_checkpoints)

        self.step = 0  # optimizer steps taken (skipped non-finite steps included)
        self.skipped_steps = 0
        self.skipped_in_a_row = 0
        self.last_val: dict = {}
        self.stop_requested = False
        # what follows every step, in this order (the checkpoint holds the O2U state of a cycle that just ended)
        self.step_hooks: list[Callable[[], None]] = [self._log_step, self._end_o2u_epoch, self._end_sgdr_cycle,
                                                     self._checkpoint]
        # BatchNorm statistics move during the forward pass; a skipped step must not keep them
        self._buffers = list(self.engine.module.buffers())
        self._buffer_backup = [b.clone() for b in self._buffers]

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "skipped_steps": self.skipped_steps, "last_val": self.last_val,
            "loader": self.train_loader.state_dict(),
            "sample_weights": self.sample_weights.state_dict() if self.sample_weights else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped_steps, self.last_val = state["step"], state["skipped_steps"], state["last_val"]
        self.train_loader.load_state_dict(state["loader"])
        if self.sample_weights and state["sample_weights"]:
            self.sample_weights.load_state_dict(state["sample_weights"])

    def save_checkpoint(self) -> None:
        self.checkpointer.save(self.step, self.state_dict())

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end of the schedule (resuming if the run directory holds a checkpoint); the summary."""
        try:
            return self._fit()
        finally:  # the loaders' worker processes serve every epoch and validation pass of this run, no more
            self.train_loader.close()
            self.val_loader.close()

    def _fit(self) -> dict:
        state = self.checkpointer.load()
        if state is not None:
            self.load_state_dict(state)
            self._print(f"resumed from {self.checkpointer.resumed_from} (step {self.step}/{self.total_steps})")
        summary_path = self.run_dir / "summary.json"
        if self.step >= self.total_steps and summary_path.exists():
            self._print(f"run already complete: {summary_path}")
            self.lock.release()
            return json.loads(summary_path.read_text())

        self.metrics = MetricsLogger(self.run_dir, self.dist.is_main, self.step)
        self.meter = StepMeter()
        self._install_signal_handlers()
        self.engine.train()
        bar = self.bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                              disable=not (self.dist.is_main and self.cfg.run.progress))
        start = time.perf_counter()
        for epoch in range(self.train_loader.epoch, self.cfg.schedule.epochs):
            self.epoch = epoch
            self.train_loader.set_epoch(epoch)
            bar.set_description(f"epoch {epoch + 1}/{self.cfg.schedule.epochs}")
            t_data = time.perf_counter()
            for batch in self.train_loader:
                data_wait = time.perf_counter() - t_data
                loss = self.train_step(batch, self.sgdr.lr(self.step))
                self.meter.add(loss, len(batch.labels) * self.dist.world, data_wait, time.perf_counter() - t_data)
                self.step += 1
                for hook in self.step_hooks:
                    hook()
                if self.step >= self.total_steps or self.stop_requested:
                    break
                t_data = time.perf_counter()
            failures = all_reduce([self.train_loader.failures], self.dist.device)[0]
            self._check_load_failures(self.train_split, failures)
            if self.stop_requested:
                bar.close()
                self._print(f"stopped by signal at step {self.step}; checkpoint saved, re-run to resume")
                self.metrics.close()
                raise SystemExit(143)
            self.last_val = self.validate()
            self.metrics.log("val", self.step, epoch=epoch + 1, **self.last_val)
            groups = ", ".join(f"{name} {100 * self.last_val[f'top1_error_{name}']:.1f}%" for name in SHOT_GROUPS
                               if self.last_val[f"top1_error_{name}"] is not None)
            self._print(f"epoch {epoch + 1}: val top-1 error {100 * self.last_val['top1_error']:.2f}% ({groups}) "
                        f"loss {self.last_val['loss']:.4f}", bar)
            if self.step >= self.total_steps:
                break
        bar.close()
        elapsed = time.perf_counter() - start
        self.save_checkpoint()
        self.checkpointer.save_weights(self.checkpointer.final_dir / "model.pt")
        summary = self._summary(elapsed)
        if self.dist.is_main:
            write_json(summary_path, summary)
        self.metrics.close()
        self.lock.release()
        return summary

    def train_step(self, batch: Batch, lr: float) -> torch.Tensor | None:
        """One SGD step at `lr`; returns the loss (a tensor on the device: reading it waits for the step), or None
        when a non-finite loss made every rank skip it."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self._buffers:
            torch._foreach_copy_(self._buffer_backup, self._buffers)
        weights = self.sample_weights.weights_for(batch.indices) if self.sample_weights else None
        out = self._forward_loss(batch, weights)
        loss = out.loss
        with record_function("fastprod.finite_check"):  # the step's one wait on the host
            bad, stop, failures = all_reduce([float(not torch.isfinite(loss)), float(self.stop_requested),
                                              self.train_loader.failures], self.dist.device)  # sums over ranks
        self.stop_requested = bool(stop)
        self._check_load_failures(self.train_split, failures)
        if bad:
            if self._buffers:
                torch._foreach_copy_(self._buffers, self._buffer_backup)
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            warnings.warn(f"step {self.step}: non-finite loss, step skipped ({self.skipped_steps} so far)")
            if self.skipped_in_a_row >= self.cfg.run.max_skipped_in_a_row:
                raise RunError(f"the loss was not finite in {self.skipped_in_a_row} steps in a row (up to step "
                               f"{self.step + 1}, lr {lr:.3g}; run.max_skipped_in_a_row): those steps were skipped and "
                               f"the weights left as they were; lower optim.lr or check the data")
            return None
        self.skipped_in_a_row = 0
        with record_function("fastprod.backward"):
            self.engine.backward(loss)
        with record_function("fastprod.optimizer_step"):
            self.engine.step()
        if self.sample_weights:
            self.sample_weights.record(batch.indices, out.ce)
        return loss.detach()

    def _forward_loss(self, batch: Batch, weights: torch.Tensor | None) -> LossOutput:
        """Model and loss; with loss.impl=fused_linear the classifier runs inside the fused loss."""
        if not self.fused_head:
            with record_function("fastprod.forward"):
                logits = self.engine(batch.images)
            with record_function("fastprod.loss"):
                return self.loss_fn(logits, batch.labels, weights=weights)
        precision = self.precision
        with record_function("fastprod.forward"), torch.autocast(
                self.dist.device.type, dtype=getattr(torch, AUTOCAST_DTYPES.get(precision, "float32")),
                enabled=precision in AUTOCAST_DTYPES):
            features = self.features(batch.images)
        with record_function("fastprod.loss"):  # the classifier head and the loss
            head = self.engine.module.get_classifier()
            bias = head.bias.to(features.dtype) if head.bias is not None else None
            return self.loss_fn(features, head.weight.to(features.dtype), bias, batch.labels, weights=weights)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled features the fused head reads (the backbone without its classifier)."""
        model = self.engine.module
        return model.forward_head(model.forward_features(images), pre_logits=True)

    # ---- step hooks ----------------------------------------------------------------------------
    def _log_step(self) -> None:
        """Metrics, TensorBoard and the progress bar on step 1, every `run.log_every_steps` and the last step."""
        every = self.cfg.run.log_every_steps
        if not (self.step % every == 0 or self.step == 1 or self.step >= self.total_steps or self.stop_requested):
            return
        steps, values = self.meter.steps, self.meter.read()
        lr = self.sgdr.lr(self.step - 1)
        mfu = self._mfu(values["img_per_s"])
        self.metrics.log("train", self.step, epoch=self.epoch + 1, lr=lr, mfu=mfu,
                         peak_mem_gib=peak_memory_gib(self.dist.device), **values)
        self.bar.update(steps)
        self.bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.3g}", img_s=f"{values['img_per_s']:.0f}",
                             mfu=f"{100 * mfu:.1f}%", refresh=False)

    def _end_o2u_epoch(self) -> None:
        if self.sample_weights and self.step % self.iters_per_epoch == 0:
            self.sample_weights.end_epoch()

    def _end_sgdr_cycle(self) -> None:
        """Seed section 1: a snapshot at the end of every SGDR cycle; O2U's cycle-end scores and next weights."""
        if not self.sgdr.is_cycle_end(self.step - 1):
            return
        cycle = self.sgdr.cycle(self.step - 1)
        path = self.checkpointer.save_snapshot(cycle)
        self._print(f"SGDR cycle {cycle} ended at step {self.step}: snapshot {path}", self.bar)
        if self.sample_weights:
            out_dir = self.run_dir / self.sample_weights.name if self.dist.is_main else None
            report = self.sample_weights.end_cycle(cycle, out_dir, self.train_split.image_ids,
                                                   self.train_split.labels)
            if report:
                self._print(f"{self.sample_weights.name} scores and next-cycle weights: {report}", self.bar)

    def _checkpoint(self) -> None:
        if (self.sgdr.is_cycle_end(self.step - 1) or self.step % self.cfg.run.ckpt_every_steps == 0
                or self.stop_requested):
            self.save_checkpoint()

    def validate(self) -> dict:
        """Top-1 error and mean cross entropy over the whole validation split (all ranks), with a bar under the
        training bar (150k images at AliProducts' scale)."""
        split = self.manifest.split(self.cfg.data.val_split)
        result = evaluate(self.engine, self.val_loader, len(split), self.dist.device,
                          progress="validate" if self.dist.is_main and self.cfg.run.progress else None)
        self._check_load_failures(split, result.failures)
        return result.metrics(split.labels, self.train_class_sizes)

    # ---- helpers -----------------------------------------------------------------------------
    def _mfu(self, img_per_s: float) -> float:
        """Model FLOP utilisation of a global training rate: achieved FLOP/s per device over its peak."""
        return img_per_s * self.flops_per_image / (self.peak_flops * self.dist.world)

    def _check_load_failures(self, split: SplitView, failures: float) -> None:
        """Stop the run when more images of one pass over `split` failed to load than the limits allow."""
        limit = min(self.cfg.data.max_load_failures, self.cfg.data.max_load_failure_fraction * len(split))
        if failures > limit:
            raise RunError(
                f"{int(failures)} of the {len(split)} {split.name} images failed to load in this pass (limit "
                f"{limit:g}: data.max_load_failures, data.max_load_failure_fraction); they are listed in "
                f"{self.run_dir / 'quarantine_runtime.jsonl'}: check the images under {self.manifest.root}, "
                f"or re-run `fastprod prepare` to quarantine them")

    def _summary(self, elapsed: float) -> dict:
        dropped = int(all_reduce([self.train_loader.failures_total], self.dist.device)[0])
        # each rank's own peak (ZeRO partitions optimizer state and gradients: what it saves shows per rank)
        peaks = [0.0] * self.dist.world
        peaks[self.dist.rank] = peak_memory_gib(self.dist.device)
        peaks = all_reduce(peaks, self.dist.device)
        return {
            "val_top1_error": self.last_val.get("top1_error"), "val_loss": self.last_val.get("loss"),
            **{f"val_{key}": value for key, value in self.last_val.items() if key.startswith(("top1_error_", "classes_"))},
            "val_images": self.last_val.get("images"), "steps": self.step, "epochs": self.cfg.schedule.epochs,
            "skipped_steps": self.skipped_steps, "quarantined_at_load": dropped,
            "val_load_failures": self.last_val.get("load_failures"),
            "num_classes": self.manifest.num_classes, "world_size": self.dist.world,
            "device": str(self.dist.device), "precision": self.precision, "model": self.cfg.model.name,
            "wall_time_s": round(elapsed, 2), "train_img_per_s": round(self.meter.img_per_s, 2),
            "mfu": round(self._mfu(self.meter.img_per_s), 4),
            "flops_per_image": self.flops_per_image, "peak_flops_per_device": self.peak_flops,
            "peak_mem_gib": round(peaks[0], 3), "peak_mem_gib_per_rank": [round(p, 3) for p in peaks],
            "final_weights": str(self.checkpointer.final_dir / "model.pt"),
        }

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, frame):
            self.stop_requested = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, request_stop)

    def _print(self, message: str, bar: tqdm | None = None) -> None:
        if self.dist.is_main:
            (bar.write if bar is not None else print)(message)
