#!/usr/bin/env bash
# Profile fastprod: every benchmark, each with ratios against a baseline measured in the same run,
# as JSON per benchmark + DIR/report.md + PNG plots.
#
#   bash bench/run.sh [--out DIR] [--quick] [--gpu | --cpu]
#
# --quick: the smallest settings (CI runs this); --gpu (default when CUDA is present) adds the GPU
# suite, sized for one H200 in under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="bench-results/$(date +%Y%m%d-%H%M%S)"
QUICK=0
GPU=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --gpu) GPU=1; shift ;;
    --cpu) GPU=0; shift ;;
    *) echo "bench/run.sh: unknown argument $1 (use --out DIR, --quick, --gpu, --cpu)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ "$GPU" = auto ]; then GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))"); fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

bench() {  # bench NAME SCRIPT ARGS...: run one benchmark, keep its log and result file
  local name="$1"; shift
  echo "== $name: $*"
  "$PY" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
}

if [ "$QUICK" = 1 ]; then
  bench kernels_cpu bench/kernels_cpu.py --batch 64 --dims 256 --classes 5003 --reps 1
  bench profile_step bench/profile_step.py --out "$OUT/profile" --models resnet10t --size 32 --batch 8 --steps 2 \
    --classes 4 --images 64 --set data.workers=0
  bench ensemble bench/ensemble.py --models 2 --classes 5003 --images 64 --reps 1
  bench loader bench/loader.py --work "$OUT/loader-data" --images 24 --batch 8 --repeats 1 --only baseline pil dali
  bench prepare_speed bench/prepare_speed.py --work "$OUT/prepare-data" --images 200 --sizes 32 --reps 1
  bench train_throughput bench/train_throughput.py --work "$OUT/train-data" --models resnet10t --sizes 32 \
    --images 64 --classes 4 --batch 8 --workers 0 --pairs 1
  bench scale bench/scale.py --work "$OUT/scale-data" --classes 503 --sizes 1000 2000 --steps 1
else
  bench train_throughput bench/train_throughput.py --work "$OUT/train-data" --models resnet18 resnet34 --sizes 64 128 \
    --backends pil dali --precisions fp32 bf16
  bench loader bench/loader.py --work "$OUT/loader-data"
  bench prepare_speed bench/prepare_speed.py --work "$OUT/prepare-data"
  bench kernels_cpu bench/kernels_cpu.py --load
  bench profile_step bench/profile_step.py --out "$OUT/profile"
  bench ensemble bench/ensemble.py
  bench tta_engines bench/tta_engines.py
  bench ensemble_report bench/ensemble_report.py --simulate --splits 5 --out "$OUT/ensemble_report"
  bench scale bench/scale.py --work "$OUT/scale-data"  # 60k / 120k / 250k images at 50,030 classes: ~20 min
fi
if [ "$GPU" = 1 ]; then
  bench gpu_kernels bench/gpu_kernels.py
fi
"$PY" bench/report.py "$OUT"
