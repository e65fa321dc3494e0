"""FLOPs per training image (MFU's numerator) against the closed form of a small conv net, the peak figures
MFU is measured against, and the precision `run.precision: auto` picks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastprod.train.engine import resolve_precision
from fastprod.train.perf import measured_matmul_flops, peak_memory_gib, training_flops_per_image


def test_training_flops_per_image_is_three_forwards_of_the_closed_form():
    size, c_in, c_out, k, classes = 12, 3, 8, 3, 5
    model = nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                          nn.Flatten(), nn.Linear(c_out * size * size, classes))
    forward = 2 * c_in * c_out * k * k * size * size + 2 * (c_out * size * size) * classes
    running_mean = model[1].running_mean.clone()
    assert training_flops_per_image(model, size, torch.device("cpu"), channels_last=True) == 3 * forward
    assert model.training and torch.equal(model[1].running_mean, running_mean)  # counted without moving BatchNorm


def test_peak_figures_are_measured():
    rate = measured_matmul_flops(torch.device("cpu"), torch.float32, n=256, seconds=0.02)
    assert 1e8 < rate < 1e14  # between a 0.1 GFLOP/s and a 100 TFLOP/s CPU
    assert 0 < peak_memory_gib(torch.device("cpu")) < 1024


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_in_bf16():
    flags = set(Path("/proc/cpuinfo").read_text().split())
    native = bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert [resolve_precision(p, torch.device("cpu")) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
