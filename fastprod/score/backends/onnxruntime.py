"""The ONNX Runtime backend (seed section 5, multi-scale TTA and scoring: the fastest CPU engine):
model.onnx from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), fp32, or int8 after
post-training static quantisation (the CPU counterpart of a TensorRT INT8 engine):

    fastprod export ... --backend onnxruntime --precision int8 --calibration data/demo-prepared
                        [--calibration-split train] [--calibration-images 128]

For int8 the fp32 graph is shape-inferred (`quant_pre_process`) and quantised in QDQ form: convolutions
and matrix products get per-channel int8 weights and uint8 activations whose ranges are calibrated
(min/max) on real TTA views (fastprod/score/calibration.py), so the ranges match what scoring will feed.
Normalisation, softmax and the mean over members stay float. onnxruntime is imported when used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastprod.score.backends.base import Backend, Run, batch_dim, example
from fastprod.score.graph import ScoringModule
from fastprod.score.tta import Views

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


def export(module: ScoringModule, views: Views, out_dir: Path, *, checkpoints: list[Path], max_batch: int,
           device: str, precision: str, calibration: torch.Tensor | None) -> str:
    if precision != "int8":
        return _export_onnx(module, views, out_dir / "model.onnx", max_batch)
    fp32 = out_dir / _export_onnx(module, views, out_dir / "model-fp32.onnx", max_batch)
    quantize_onnx(fp32, out_dir / "model.onnx", calibration)
    fp32.unlink()
    return "model.onnx"


def _export_onnx(module: ScoringModule, views: Views, path: Path, max_batch: int) -> str:
    program = torch.onnx.export(module, (example(views, 2),), dynamo=True, input_names=["views"],
                                output_names=["probs"], dynamic_shapes=({0: batch_dim(max_batch)},),
                                optimize=True, verbose=False)
    program.save(str(path), external_data=False)
    return path.name


def quantize_onnx(fp32_model: Path, out: Path, calibration: torch.Tensor, batch: int = 16) -> None:
    """Write the int8 QDQ model `out` from the fp32 ONNX model, calibrated on uint8 views."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pieces = iter(calibration.split(batch))

        def get_next(self) -> dict | None:
            piece = next(self.pieces, None)
            return None if piece is None else {"views": piece.numpy()}

    inferred = out.with_name(f"{out.stem}-inferred.onnx")
    quant_pre_process(str(fp32_model), str(inferred))
    quantize_static(str(inferred), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTIZED_OPS)
    inferred.unlink()


def load(engine_dir: Path, meta: dict, device: torch.device) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(engine_dir / meta["artifact"]), options, providers=providers)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"views": x.cpu().numpy()})[0])
    return run


ONNXRUNTIME = Backend("onnxruntime", precisions=("fp32", "int8"), cpu_precisions=("fp32", "int8"), export=export,
                      load=load, why="its CPU kernels have no bf16/fp16 convolutions")
