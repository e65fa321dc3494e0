"""Training-step throughput of a timm backbone per precision and memory format, as ratios against
fp32 NCHW measured in the same run (these machines are noisy: medians of several timed steps).

    python bench/train_step.py --model resnet18 --size 64 --batch 32 [--classes 20] [--steps 6]

On a GPU it times bf16/fp16 autocast too; on a CPU it shows why the demo trains in fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch


def time_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None,
               steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    device = x.device.type
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times[1:])  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16} | ({"fp16": torch.float16} if device.type == "cuda" else {})
    rows = []
    for precision, dtype in dtypes.items():
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model = timm.create_model(args.model, num_classes=args.classes, drop_rate=0.5).to(device)
            img_s = time_steps(model.to(memory_format=fmt), x.contiguous(memory_format=fmt), y, dtype, args.steps)
            rows.append({"precision": precision, "layout": layout, "img_per_s": round(img_s, 1)})
    base = rows[0]["img_per_s"]
    print(f"{args.model} @ {args.size}px, batch {args.batch}, {device} ({torch.get_num_threads()} threads)")
    for row in rows:
        row["x_fp32_nchw"] = round(row["img_per_s"] / base, 3)
        print(f"  {row['precision']:5s} {row['layout']:14s} {row['img_per_s']:9.1f} img/s  x{row['x_fp32_nchw']:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
