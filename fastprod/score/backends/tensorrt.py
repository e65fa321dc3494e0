"""The TensorRT backend (seed section 5, multi-scale TTA and scoring: the GPU engine): model.ep, a
torch_tensorrt-compiled ExportedProgram. It needs torch_tensorrt with TensorRT and a CUDA GPU whatever
--device says (so fp16 is not refused for --device cpu); torch_tensorrt is imported only here, when used."""

from __future__ import annotations

from pathlib import Path

import torch

from fastprod.score.backends.base import Backend, Run, example, on_device
from fastprod.score.graph import DTYPES, ScoringModule
from fastprod.score.tta import Views


def export(module: ScoringModule, views: Views, out_dir: Path, *, checkpoints: list[Path], max_batch: int,
           device: str, precision: str, calibration: torch.Tensor | None) -> str:
    try:
        import torch_tensorrt
    except (ImportError, OSError) as err:  # OSError: the wheel without its TensorRT libraries (libnvinfer)
        raise RuntimeError(f"--backend tensorrt needs torch_tensorrt with TensorRT (pip install '.[tensorrt]' on a "
                           f"CUDA machine): {err}") from None
    if not torch.cuda.is_available():
        raise RuntimeError("--backend tensorrt needs a CUDA GPU")
    path = out_dir / "model.ep"
    module = module.float().cuda()  # TensorRT picks kernels per layer within enabled_precisions
    opt = min(64, max_batch)
    inputs = [torch_tensorrt.Input(min_shape=(1, 3, views.image_size, views.image_size),
                                   opt_shape=(opt, 3, views.image_size, views.image_size),
                                   max_shape=(max_batch, 3, views.image_size, views.image_size), dtype=torch.uint8)]
    trt = torch_tensorrt.compile(module, ir="dynamo", inputs=inputs, enabled_precisions={DTYPES[precision]},
                                 truncate_double=True)
    torch_tensorrt.save(trt, str(path), output_format="exported_program", inputs=[example(views, opt, "cuda")])
    return path.name


def load(engine_dir: Path, meta: dict, device: torch.device) -> Run:
    import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops the program calls)

    return on_device(torch.export.load(str(engine_dir / meta["artifact"])).module(), device)


TENSORRT = Backend("tensorrt", precisions=("fp32", "bf16", "fp16"), cpu_precisions=("fp32", "bf16", "fp16"),
                   export=export, load=load)
