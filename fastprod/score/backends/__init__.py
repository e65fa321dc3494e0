"""The export backends, registered by name (seed section 5, multi-scale TTA and scoring: the engines
`fastprod export` writes and `fastprod score` runs). `export_engine` and `Engine`
(fastprod/score/engine.py) look a backend up here by its engine.json / --backend name; the CLI's
--backend and --precision choices come from here too.

Each in NAME.py, with the artifact it writes next to engine.json:
    eager        member-K.pt state dicts, rebuilt with `create_model` (the reference)
    onnxruntime  model.onnx from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), fp32, or
                 int8 after static quantisation calibrated on real views (fastprod/score/calibration.py)
    inductor     model.pt2, an AOTInductor package compiled ahead of time (loads without compiling)
    tensorrt     model.ep, a torch_tensorrt-compiled ExportedProgram (needs TensorRT and a GPU)

Adding a backend: write fastprod/score/backends/NAME.py with an `export` and a `load` function and a
`Backend(name, precisions, cpu_precisions, export, load)` (the interface: fastprod/score/backends/base.py;
import optional libraries inside the functions, so the registry loads without them), import it below
and add it to BACKENDS. Nothing else changes: precisions are checked from what it declares.
"""

from __future__ import annotations

from fastprod.score.backends.base import Backend
from fastprod.score.backends.eager import EAGER
from fastprod.score.backends.inductor import INDUCTOR
from fastprod.score.backends.onnxruntime import ONNXRUNTIME
from fastprod.score.backends.tensorrt import TENSORRT

BACKENDS: dict[str, Backend] = {b.name: b for b in (EAGER, ONNXRUNTIME, INDUCTOR, TENSORRT)}  # --backend order
PRECISIONS = tuple(dict.fromkeys(p for b in BACKENDS.values() for p in b.precisions))  # every --precision


def backend_for(name: str, precision: str, device: str) -> Backend:
    """The backend `name`, refused (ValueError) unless it exports `precision` with `device`."""
    if name not in BACKENDS:
        raise ValueError(f"--backend: {name!r} is not one of {tuple(BACKENDS)}")
    backend = BACKENDS[name]
    if precision not in backend.precisions:
        if backend.why:
            raise ValueError(f"--backend {name} exports {' or '.join(backend.precisions)} ({backend.why})")
        others = [b.name for b in BACKENDS.values() if precision in b.precisions]
        if not others:
            raise ValueError(f"--precision: {precision!r} is not one of {PRECISIONS}")
        raise ValueError(f"--precision {precision} is implemented for --backend {' or '.join(others)} only")
    if device == "cpu" and precision not in backend.cpu_precisions:
        use = " or ".join(sorted(backend.cpu_precisions))
        raise ValueError(f"--precision {precision} is not supported on CPU (use {use})")
    return backend
