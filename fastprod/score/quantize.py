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

import numpy as np
import torch

from fastprod.data.images import ImageError, load_rgb
from fastprod.score.tta import Views, make_views

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


def calibration_views(sources: list[str | Path], split: str, count: int, views: Views, seed: int = 0) -> torch.Tensor:
    """uint8 [K * V, 3, S, S]: the TTA views of `count` images drawn (seeded) from a prepared dataset's split
    or from image files/folders; undecodable images are skipped."""
    from fastprod.score.score import items_from_manifest, items_from_paths

    first = Path(sources[0])
    items = (items_from_manifest(first, split) if len(sources) == 1 and (first / "manifest.parquet").is_file()
             else items_from_paths(list(sources)))
    order = np.random.default_rng(seed).permutation(len(items.paths))
    batches = []
    for i in order:
        try:
            batches.append(make_views(load_rgb(items.paths[i]), views))
        except ImageError:
            continue
        if len(batches) == count:
            break
    if not batches:
        raise ValueError(f"--calibration {sources}: no decodable images")
    return torch.cat(batches)


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
