"""The fused classifier head + SCE loss on the CPU (kernels/linear_loss, chunked torch path) against the
naive path (F.linear, then the plain torch loss), as ratios measured in the same run.

    python bench/kernels_cpu.py [--batch 256] [--dims 512 2048] [--classes 50030] [--reps 3]
                                [--threads 1 2] [--load] [--json FILE]

One mode per `--threads` count (torch's intra-op threads), and with `--load` the same again while a second,
CPU-bound process (one busy thread) runs on the machine, as on a shared node; each mode's fused/naive ratios
come from naive and fused measured back to back in that mode.
Each (mode, path, D) runs in a fresh process (Linux: /proc/self/status, peak reset through clear_refs) whose
malloc returns every freed block of 64 KiB or more to the OS, after a small warm-up call.
"Extra" memory is the peak resident set during the first forward + backward minus what was resident
before it (features,
head weight, bias) minus the gradients it returns (dX, dW, db): the working memory of the loss,
which for the naive path is dominated by the [B, C] logits and their softmax/gradient copies.
Time is the median fwd+bwd of `--reps` runs after that first one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from fastprod.kernels import linear_cross_entropy
from fastprod.kernels.reference import reference_loss
from results import write_json

LOSS = dict(alpha=1.0, beta=0.1)  # the config's SCE defaults
PATHS = ("naive", "chunked")


def step(path: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
         weights: torch.Tensor) -> None:
    """One forward + backward of head + weighted SCE."""
    if path == "naive":
        out = reference_loss(F.linear(x, w, b), target, weights=weights, **LOSS)
    else:
        out = linear_cross_entropy(x, w, b, target, weights=weights, impl="chunked", **LOSS)
    out.loss.backward()


def rss_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak since the last `reset_peak_rss`) of this process."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) * 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def child(path: str, batch: int, dim: int, classes: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=g).requires_grad_()
    w = (torch.randn(classes, dim, generator=g) * dim ** -0.5).requires_grad_()
    b = torch.zeros(classes).requires_grad_()
    target = torch.randint(0, classes, (batch,), generator=g)
    weights = torch.rand(batch, generator=g) * 2
    step(path, x[:8], w[:4096], b[:4096], target[:8] % 4096, weights[:8])  # libraries' own buffers
    for t in (x, w, b):
        t.grad = None
    reset_peak_rss()
    before = rss_bytes("VmRSS")
    step(path, x, w, b, target, weights)
    grads = sum(t.grad.numel() * t.grad.element_size() for t in (x, w, b))
    extra = rss_bytes("VmHWM") - before - grads
    times = []
    for _ in range(reps):
        for t in (x, w, b):
            t.grad = None
        start = time.perf_counter()
        step(path, x, w, b, target, weights)
        times.append(time.perf_counter() - start)
    return {"path": path, "dim": dim, "extra_bytes": max(extra, 0), "fwd_bwd_s": statistics.median(times)}


def measure(path: str, args: argparse.Namespace, dim: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--batch", str(args.batch), "--dims", str(dim),
           "--classes", str(args.classes), "--reps", str(args.reps)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",  # freed = unmapped
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.splitlines()[-1])


@contextmanager
def competing_load(on: bool) -> Iterator[None]:
    """A second CPU-bound process (one busy Python thread) running for the duration, when `on`; it also stops
    when this process dies."""
    if not on:
        yield
        return
    busy = subprocess.Popen([sys.executable, "-c", f"import os\nwhile os.getppid() == {os.getpid()}: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--classes", type=int, default=50030)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts, one mode each")
    parser.add_argument("--load", action="store_true", help="also each mode with a competing CPU-bound process")
    parser.add_argument("--json", default=None, help="also write the result file (bench/results.py) here")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.dims[0], args.classes, args.reps)))
        return
    print(f"fused linear + SCE, B={args.batch}, C={args.classes}, CPU ({os.cpu_count()} cores), "
          f"ratios vs naive F.linear + loss in the same run and mode")
    print(f"{'D':>6} {'threads':>7} {'load':>5} {'naive extra MiB':>16} {'fused extra MiB':>16} "
          f"{'memory ratio':>13} {'naive s':>8} {'fused s':>8} {'time ratio':>11}")
    rows = []
    for threads in args.threads:
        for load in (False, True) if args.load else (False,):
            with competing_load(load):
                for dim in args.dims:
                    naive, fused = measure("naive", args, dim, threads), measure("chunked", args, dim, threads)
                    row = {"batch": args.batch, "dim": dim, "classes": args.classes, "threads": threads,
                           "load": load, "label": f"D={dim} {threads}t{' +load' if load else ''}",
                           "naive_extra_mib": naive["extra_bytes"] / 2**20,
                           "fused_extra_mib": fused["extra_bytes"] / 2**20,
                           "memory_ratio": naive["extra_bytes"] / max(fused["extra_bytes"], 1),
                           "naive_s": naive["fwd_bwd_s"], "fused_s": fused["fwd_bwd_s"],
                           "time_ratio": fused["fwd_bwd_s"] / naive["fwd_bwd_s"]}
                    rows.append(row)
                    print(f"{dim:>6} {threads:>7} {'yes' if load else 'no':>5} {row['naive_extra_mib']:>16.1f} "
                          f"{row['fused_extra_mib']:>16.1f} {row['memory_ratio']:>12.1f}x {row['naive_s']:>8.3f} "
                          f"{row['fused_s']:>8.3f} {row['time_ratio']:>10.2f}x", flush=True)
    write_json(args.json, "kernels_cpu", f"fused linear + SCE on CPU, B={args.batch}, C={args.classes}",
               "naive F.linear + reference loss, same run", rows,
               {"label": "label", "value": "time_ratio", "ylabel": "fwd + bwd time, fused / naive"})


if __name__ == "__main__":
    main()
