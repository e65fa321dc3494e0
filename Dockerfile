# fastprod for GPU clusters: CUDA 13 + cuDNN, torch 2.14.1 (CUDA 13 wheels), DeepSpeed with its ops
# prebuilt for the target GPU architectures, NVIDIA DALI, FFCV (with its libturbojpeg / OpenCV
# build dependencies), torch-tensorrt with TensorRT, apex built from source (FusedSGD), fastprod.
# Versions match pyproject.toml.
#
#   docker build -t fastprod .                                   # A100 + H100/H200 (sm_80, sm_90)
#   docker build --build-arg TORCH_CUDA_ARCH_LIST="9.0" -t fastprod .
#   docker run --gpus all --ipc=host -v /data:/data fastprod --config configs/resnet34_aliproducts.yaml
#
# Multi-node: one container per node, sharing a hostfile (see README, "Multi-node training").
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG APEX_REF=25.09
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python, compilers for DeepSpeed / apex extensions, FFCV's libraries (needed at run time too),
# and what DeepSpeed's multi-node launcher uses (ssh, pdsh). Ubuntu packages follow the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev git build-essential ninja-build pkg-config \
      libturbojpeg0-dev libopencv-dev openssh-client openssh-server pdsh \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3013
RUN pip install --upgrade pip setuptools wheel \
 && pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu130

# DeepSpeed with the ops fastprod's runs use prebuilt for TORCH_CUDA_ARCH_LIST (no JIT compile at start).
RUN DS_BUILD_UTILS=1 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 \
    pip install --no-build-isolation "deepspeed>=0.19"

# apex from source with its C++/CUDA extensions: fastprod uses apex.optimizers.FusedSGD when present.
RUN git clone --depth 1 --branch "${APEX_REF}" https://github.com/NVIDIA/apex /tmp/apex \
 && APEX_CPP_EXT=1 APEX_CUDA_EXT=1 pip install --no-build-isolation /tmp/apex \
 && rm -rf /tmp/apex

WORKDIR /opt/fastprod
COPY pyproject.toml README.md ./
COPY fastprod ./fastprod
COPY kernels ./kernels
COPY launch ./launch
COPY configs ./configs
COPY bench ./bench
COPY tests ./tests
# DALI (CUDA 13 build), FFCV + numba, ONNX Runtime, torch-tensorrt (brings TensorRT), test tools.
RUN pip install -e '.[dali,ffcv,onnx,tensorrt,dev]'

# Single node: `deepspeed --num_gpus 8 launch/train.py --config ...` is the entry point.
ENTRYPOINT ["deepspeed", "launch/train.py"]
CMD ["--config", "configs/demo.yaml"]
