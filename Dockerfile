# fastprod for GPU clusters (first version; the bench/Dockerfile issue completes it with DALI,
# FFCV, TensorRT and apex). Versions match pyproject.toml.
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/fastprod
COPY pyproject.toml README.md ./
COPY fastprod ./fastprod
COPY kernels ./kernels
COPY launch ./launch
COPY configs ./configs
RUN pip install --upgrade pip && pip install -e '.[dev]'

# Multi-GPU: deepspeed --num_gpus 8 launch/train.py --config configs/resnet34_aliproducts.yaml
ENTRYPOINT ["deepspeed", "launch/train.py"]
CMD ["--config", "configs/demo.yaml"]
