#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with fastprod and its test tools.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# FFCV builds against libturbojpeg and OpenCV and loads them at run time (data.backend: ffcv).
if ! dpkg -s libturbojpeg0-dev libopencv-dev >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q libturbojpeg0-dev libopencv-dev
fi
# dali and ffcv: every data backend is tested on the CPU (DALI pipelines run with device_id=None);
# onnx: the onnxruntime scoring engine is tested on the CPU.
.venv/bin/python -m pip install -q -e '.[dev,dali,ffcv,onnx]'
