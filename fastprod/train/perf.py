"""What a training step costs the machine: FLOPs per image, the peak rate they are measured against (MFU) and
peak memory, reported in `metrics.jsonl` and `summary.json` (torchtitan reports the same two).

FLOPs are counted once at start by `torch.utils.flop_counter` on one forward pass (matmuls and convolutions),
times 3 for forward + backward. The peak rate is the GPU's dense bf16/fp16 (or fp32) tensor rate from its data
sheet when the device is known, else a measured square-matmul rate in the run's precision with the run's
threads -- on a CPU, what its matrix units deliver to a matmul of that size, the best any step could do.
"""

from __future__ import annotations

import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

# dense tensor-core peaks in FLOP/s (data sheets; SXM parts): (16-bit, tf32/fp32)
GPU_PEAKS = {"H200": (989e12, 495e12), "H100": (989e12, 495e12), "A100": (312e12, 156e12),
             "L40S": (362e12, 183e12), "A10": (125e12, 62.5e12)}


def training_flops_per_image(model: torch.nn.Module, image_size: int, device: torch.device,
                             channels_last: bool) -> float:
    """Forward + backward FLOPs of one image (3x the forward's), counted on a forward pass in eval mode (a
    train-mode pass would move the BatchNorm statistics)."""
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return 3.0 * counter.get_total_flops()


def peak_flops(device: torch.device, precision: str) -> float:
    """FLOP/s a step is measured against: the GPU's data-sheet peak, else a measured matmul rate."""
    half = precision in ("bf16", "fp16")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (peak16, peak32) in GPU_PEAKS.items():
            if key in name:
                return peak16 if half else peak32
    return measured_matmul_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.1) -> float:
    """The best rate of an n x n x n matmul over ~`seconds` of repeats (after one warm-up)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, deadline = float("inf"), time.perf_counter() + seconds
    torch.mm(a, b)
    while time.perf_counter() < deadline or best == float("inf"):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on a GPU; on the CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
