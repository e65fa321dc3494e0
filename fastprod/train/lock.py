"""One training per run directory: an exclusive `flock` on `<run>/.lock`, held by rank 0 for the run.

The operating system releases the lock when the process ends, however it ends (SIGKILL included), so a
crashed run never leaves a stale lock and re-running the same command resumes it. A second training on
the same directory is refused with the holder's host and PID instead of interleaving `metrics.jsonl` and
replacing the other run's results.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import torch

from fastprod.train.distributed import Dist, all_reduce
from fastprod.train.errors import RunError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path, dist: Dist) -> None:
        self.file = None
        holder = ""
        if dist.is_main:
            file = open(run_dir / LOCK_FILE, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "an unknown process"
                file.close()
            else:
                file.seek(0)
                file.truncate()
                file.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
                file.flush()
                self.file = file
        if all_reduce([float(bool(holder))], dist.device, op=torch.distributed.ReduceOp.MAX)[0]:
            raise RunError(f"run.dir {run_dir} is in use by another training ({holder or 'see rank 0'}): "
                           f"wait for it to finish, or set another run.dir")

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor releases the flock
            self.file = None
