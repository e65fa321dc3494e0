"""INT8 scoring engines for the CPU: ONNX Runtime post-training static quantization (the CPU
counterpart of a TensorRT INT8 engine in the mission's batch-scoring path).

    fastprod export ... --backend onnxruntime --precision int8 --calibration data/demo-prepared
                        [--calibration-split train] [--calibration-images 128]

The fp32 graph from the dynamo exporter is shape-inferred (`quant_pre_process`) and quantised in QDQ
form: convolutions and matrix products get per-channel int8 weights and uint8 activations whose ranges
are calibrated (min/max) on real TTA views of `--calibration-images` images, so the ranges match what
scoring will feed. Normalisation, softmax and the mean over members stay float.
"""

from __future__ import annotations

from pathlib import Path

import torch

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


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
