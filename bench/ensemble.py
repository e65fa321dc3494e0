"""Class-weighted ensemble apply: images/s and bytes read/s against a measured memory copy.

    .venv/bin/python bench/ensemble.py [--models 4] [--classes 50030] [--images 1024] [--chunks 8 32] [--threads T]
                                       [--reps 3] [--json FILE]

M float16 [N, C] probability files (memory-mapped, as `fastprod score --probs` writes them) are
combined as sum_m w[m, c] * P_m[n, c] followed by top-5. Compared, in the same process:
  fastprod      `fastprod ensemble apply` itself (fastprod.score.ensemble.apply: the fused numba kernel
                fastprod/score/weighted_topk.py over row tiles of --chunks images, parquet out)
  python-loop   numpy, one model at a time over the whole matrix: out += w[m] * P_m.astype(float32)
  einsum        numpy einsum over the stacked float32 matrices ('mnc,mc->nc')
Bandwidth = bytes of float16 probabilities read per second; the reference is the copy rate of a
buffer of the same size on this machine (the better of numpy copyto and torch copy_, each byte read
once and written once). Target: >= 50% of the copy rate. Median of --reps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from results import hardware, write_json

from fastprod.score.ensemble import Preds, apply


def timed(fn, reps: int) -> float:
    fn()  # warm: page cache, allocator, thread pool
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--classes", type=int, default=50030)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 16], help="rows per tile")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads / apply workers (default: all cores)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    M, N, C = args.models, args.images, args.classes
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ensemble-"))
    for m in range(M):
        mm = np.lib.format.open_memmap(tmp / f"p{m}.npy", mode="w+", dtype=np.float16, shape=(N, C))
        for lo in range(0, N, 256):
            mm[lo:lo + 256] = rng.random((min(256, N - lo), C), dtype=np.float32) / C
        mm.flush()
        del mm
    preds = [Preds(tmp / f"p{m}.npy") for m in range(M)]
    probs = [p.probs for p in preds]
    w = rng.random((M, C)).astype(np.float32)
    w /= w.sum(0)
    nbytes = M * N * C * 2
    print(f"{hardware()}\nM={M} N={N} C={C}: {nbytes / 2**20:.0f} MiB of float16 probabilities")

    src = np.ones(nbytes // 2, dtype=np.float16)
    dst = np.empty_like(src)
    ts, td = torch.from_numpy(src), torch.from_numpy(dst)
    copy_s = min(timed(lambda: np.copyto(dst, src), args.reps), timed(lambda: td.copy_(ts), args.reps))
    copy_bw = nbytes / copy_s
    del src, dst, ts, td
    print(f"memory copy: {copy_bw / 1e9:.2f} GB/s")

    def fastprod(chunk: int):
        return lambda: apply(preds, w, tmp / "out", topk=5, chunk=chunk, threads=args.threads, progress=False)

    def python_loop():
        out = np.zeros((N, C), dtype=np.float32)
        for m in range(M):
            out += w[m] * probs[m].astype(np.float32)
        torch.from_numpy(out).topk(5, dim=1)

    def einsum():
        out = np.einsum("mnc,mc->nc", np.stack([p.astype(np.float32) for p in probs]), w)
        torch.from_numpy(out).topk(5, dim=1)

    ref = np.einsum("mnc,mc->nc", np.stack([p[:64].astype(np.float64) for p in probs]), w.astype(np.float64))
    apply(preds, w, tmp / "out", topk=5, progress=False)
    top = np.stack(pq.read_table(tmp / "out" / "predictions.parquet")["topk_probs"].to_numpy(zero_copy_only=False))
    best = -np.sort(-ref, axis=1)[:, :5]
    err = float(np.abs(top[:64] - best).max() / np.abs(best).max())
    rows = []
    methods = [(f"fastprod chunk={c}", fastprod(c)) for c in args.chunks] + [("python-loop", python_loop),
                                                                             ("einsum", einsum)]
    for name, fn in methods:
        s = timed(fn, args.reps)
        rows.append({"method": name, "seconds": s, "images_per_s": N / s, "read_GB_per_s": nbytes / s / 1e9,
                     "fraction_of_copy": nbytes / s / copy_bw})
    base = {r["method"]: r["seconds"] for r in rows}
    for r in rows:
        r["x_python_loop"] = base["python-loop"] / r["seconds"]
        r["x_einsum"] = base["einsum"] / r["seconds"]
    print(f"{'method':<22}{'img/s':>10}{'GB/s':>8}{'of copy':>9}{'x loop':>8}{'x einsum':>9}")
    for r in rows:
        print(f"{r['method']:<22}{r['images_per_s']:>10.0f}{r['read_GB_per_s']:>8.2f}{r['fraction_of_copy']:>9.0%}"
              f"{r['x_python_loop']:>8.2f}{r['x_einsum']:>9.2f}")
    print(f"fastprod top-5 vs float64 reference (first 64 images): max relative error {err:.1e}")
    for r in rows:
        r["copy_GB_per_s"] = copy_bw / 1e9
    write_json(args.json, "ensemble", f"Ensemble apply, M={M} N={N} C={C} (float16 memmaps)",
               "python-loop (numpy per model) and einsum; bandwidth against a memory copy", rows,
               {"label": "method", "value": "images_per_s", "ylabel": "images/s"})
    import shutil

    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
