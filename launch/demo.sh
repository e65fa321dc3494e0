#!/usr/bin/env bash
# The end-to-end demo on a fresh machine: set up, synthesise an AliProducts-format dataset,
# prepare it (manifest + quarantine), and train the demo config through the DeepSpeed launcher.
# Re-running resumes (or reports the finished run); delete runs/demo to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source .venv/bin/activate
export HF_HUB_OFFLINE=1
[ -f data/demo/train.json ] || fastprod synth data/demo --corrupt 4
fastprod prepare data/demo --out data/demo-prepared
deepspeed --num_gpus 1 launch/train.py --config configs/demo.yaml "$@"
