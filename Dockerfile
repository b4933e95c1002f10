# syntax=docker/dockerfile:1.7
# Deepfake-detection service, GPU image:  docker build -t dfs . && docker run --gpus=all -p 8000:8000 dfs
#
# Stages: `python` (CUDA 13 runtime + cuDNN + Python 3.12 venv with the project), `weights`
# (optional: downloads the public RetinaFace and FTCN weights, checks their sha256 and exports FTCN
# into a model repository), `runtime` (non-root, serves /opt/dfs/model_repository or a mounted one).
# TensorRT engines are NOT built here: they depend on the GPU, so the service builds them at first
# start into DFS_ENGINE_CACHE (mount a volume there to keep them).

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS python
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.12 is Ubuntu 24.04's own; libgl/glib are what OpenCV and mediapipe load at import.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates curl libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv && pip install --upgrade pip==25.3
WORKDIR /src
# The same pins as scripts/setup.sh, with the GPU extra instead of the CPU one
# (tests/deploy/test_docker_install.py resolves this exact set on CI).
ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
# TensorRT comes from NVIDIA's index; build with --build-arg TENSORRT_SPEC= to leave it out.
# Unpinned on purpose: NVIDIA's index serves the build matching CUDA 13; pin it (tensorrt-cu13==X)
# for reproducible images once you have chosen one.
ARG TENSORRT_SPEC="tensorrt-cu13"
COPY pyproject.toml README.md ./
COPY models ./models
COPY export ./export
COPY service ./service
COPY training ./training
RUN pip install ${TORCH_SPEC} \
 && pip install ".[gpu]" \
 && pip install --no-deps mediapipe==0.10.21 \
 && if [ -n "${TENSORRT_SPEC}" ]; then pip install --extra-index-url https://pypi.nvidia.com ${TENSORRT_SPEC}; fi

FROM python AS weights
# Set to 0 to build an image without baked-in weights (then mount a model repository).
ARG BAKE_WEIGHTS=1
# Pytorch_Retinaface's ResNet-50 weights as republished on GitHub releases by facexlib (the
# original is a Google Drive link); the MobileNet-0.25 file is detection_mobilenet0.25_Final.pth.
ARG RETINAFACE_URL=https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth
ARG RETINAFACE_SHA256=""
ARG FTCN_URL=https://github.com/yinglinzheng/FTCN/releases/download/weights/ftcn_tt.pth
ARG FTCN_SHA256=""
COPY deploy/fetch_weights.sh /usr/local/bin/fetch_weights.sh
RUN mkdir -p /opt/dfs/model_repository /opt/dfs/weights \
 && if [ "${BAKE_WEIGHTS}" = "1" ]; then \
      fetch_weights.sh "${RETINAFACE_URL}" "${RETINAFACE_SHA256}" /opt/dfs/weights/retinaface.pth \
   && fetch_weights.sh "${FTCN_URL}" "${FTCN_SHA256}" /opt/dfs/weights/ftcn_tt.pth \
   && python -m export --model ftcn --checkpoint /opt/dfs/weights/ftcn_tt.pth --out /opt/dfs/model_repository \
   && rm /opt/dfs/weights/ftcn_tt.pth; \
    fi

FROM ${CUDA_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates curl libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/dfs dfs \
 && mkdir -p /var/cache/dfs/engines /tmp/dfs && chown -R dfs /var/cache/dfs /tmp/dfs
COPY --from=python /opt/venv /opt/venv
COPY --from=python /src /src
COPY --from=weights --chown=dfs /opt/dfs /opt/dfs
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    DFS_HOST=0.0.0.0 DFS_PORT=8000 DFS_WORKERS=1 \
    DFS_MODEL_REPOSITORY=/opt/dfs/model_repository \
    DFS_ENGINE_CACHE=/var/cache/dfs/engines \
    DFS_RETINAFACE_WEIGHTS=/opt/dfs/weights/retinaface.pth \
    DFS_TEMP_DIR=/tmp/dfs \
    DFS_DEVICE=auto
WORKDIR /src
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/healthcheck"]
# python -m service reads DFS_HOST, DFS_PORT, DFS_WORKERS and DFS_LOG_LEVEL (uvicorn underneath).
ENTRYPOINT ["python", "-m", "service"]
