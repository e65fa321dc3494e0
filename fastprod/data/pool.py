"""`worker_pool`: the process pool that `fastprod synth` and `fastprod prepare` use for image work.

Workers come from a forkserver, never from a fork of the calling process: that process may already
run threads (torch, ONNX Runtime, numba, DALI), and a forked child inherits the locks they held and
can hang forever (seen in CI: a pool forked after the ONNX Runtime tests never finished).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.pool import Pool


def worker_pool(workers: int) -> Pool:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([])  # workers import what they run, not the caller's __main__ (the whole CLI)
    return context.Pool(workers)
