# syntax=docker/dockerfile:1.7
# Deepfake-detection service, GPU image:  docker build -t deepfake-service . && docker run --gpus=all -p 8000:8000 deepfake-service
#
# Stages: `python` (CUDA 13 runtime + cuDNN + Python 3.12 venv with the project), `weights`
# (optional, BAKE_WEIGHTS=1: downloads the public RetinaFace and FTCN weights, checks their sha256
# and exports FTCN into a model repository), `runtime` (non-root, serves /opt/dfs/model_repository
# or a repository mounted over it).
# TensorRT engines are NOT built here: they depend on the GPU, so the service builds them at first
# start into DFS_ENGINE_CACHE (mount a volume there to keep them). Needs an NVIDIA driver >= 580.

# torch 2.14.1's Linux wheels are built for CUDA 13.0 (they pull nvidia-*-cu13 13.0.x), hence 13.0.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS python
ARG DEBIAN_FRONTEND=noninteractive
# Python 3.12 is Ubuntu 24.04's own; libgl/glib are what OpenCV and mediapipe load at import.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates curl libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
# ORT_DISABLE_TELEMETRY: onnxruntime's telemetry off (the export at build time creates sessions too).
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1
RUN python3 -m venv /opt/venv && pip install --upgrade pip==25.3
WORKDIR /src
# The same pins as scripts/setup.sh, with the GPU runtime instead of the CPU one.
# tests/deploy/test_docker_install.py resolves exactly these lines for Python 3.12 / manylinux on CI.
ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
# The CUDA 13 build of ONNX Runtime (its CUDA/TensorRT providers link libcudart.so.13, libcudnn.so.9).
ARG ONNXRUNTIME_SPEC="onnxruntime-gpu==1.31.1"
# TensorRT from NVIDIA's index; build with --build-arg TENSORRT_SPEC= to leave it out.
# 10.x on purpose: onnxruntime-gpu 1.31.1's TensorRT provider links libnvinfer.so.10 /
# libnvonnxparser.so.10, so TensorRT 11 would leave that provider unloadable.
ARG TENSORRT_SPEC="tensorrt-cu13==10.16.1.11"
ARG MEDIAPIPE_SPEC="mediapipe==0.10.21"
COPY pyproject.toml README.md ./
COPY models ./models
COPY export ./export
COPY service ./service
COPY training ./training
# mediapipe goes in with --no-deps: its metadata pins numpy<2 and pulls jax/opencv-contrib; its real
# needs are in pyproject's dependencies.
RUN pip install ${TORCH_SPEC} ".[gpu]" ${ONNXRUNTIME_SPEC} \
 && pip install --no-deps ${MEDIAPIPE_SPEC} \
 && if [ -n "${TENSORRT_SPEC}" ]; then pip install --extra-index-url https://pypi.nvidia.com ${TENSORRT_SPEC}; fi \
 && python -I -c "import service.app, mediapipe, onnxruntime, torch; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"

FROM python AS weights
# Set to 0 to build an image without baked-in weights (then mount a model repository).
ARG BAKE_WEIGHTS=1
# Pytorch_Retinaface's ResNet-50 weights as republished on GitHub releases by facexlib (the
# original is a Google Drive link). The MobileNet-0.25 file the FTCN deploy uses is
# https://github.com/yinglinzheng/face_weights/releases/download/v1/mobilenet0.25_Final.pth
# (either layout loads: the service tells them apart by their keys).
ARG RETINAFACE_URL=https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth
# Empty = not verified (the digest is printed in the build log so it can be pinned); set it to pin.
ARG RETINAFACE_SHA256=""
ARG FTCN_URL=https://github.com/yinglinzheng/FTCN/releases/download/weights/ftcn_tt.pth
ARG FTCN_SHA256=""
COPY deploy/fetch_weights.sh /usr/local/bin/fetch_weights.sh
# The default bundle (version 1 of dcl and ftcn, trained by training/recipes/default_bundle.sh) is
# always in the image, so BAKE_WEIGHTS=0 still serves trained models. The official FTCN weights
# become ftcn version 2, which the service prefers (the highest version of each model serves).
COPY model_repository /opt/dfs/model_repository
# ftcn_tt.pth stays in the image: it is the manifest's source checkpoint, which DFS_RUNTIME=torch loads.
RUN mkdir -p /opt/dfs/model_repository /opt/dfs/weights \
 && if [ "${BAKE_WEIGHTS}" = "1" ]; then \
      fetch_weights.sh "${RETINAFACE_URL}" "${RETINAFACE_SHA256}" /opt/dfs/weights/retinaface.pth \
   && fetch_weights.sh "${FTCN_URL}" "${FTCN_SHA256}" /opt/dfs/weights/ftcn_tt.pth \
   && python -m export --model ftcn --checkpoint /opt/dfs/weights/ftcn_tt.pth --version 2 --out /opt/dfs/model_repository; \
    fi

FROM ${CUDA_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates curl libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 dfs \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/dfs dfs \
 && mkdir -p /var/cache/dfs/engines /var/lib/dfs && chown -R 10001:10001 /var/cache/dfs /var/lib/dfs
COPY --from=python /opt/venv /opt/venv
COPY --from=weights --chown=10001:10001 /opt/dfs /opt/dfs
# tensorrt_libs: where the TensorRT wheel puts libnvinfer.so.10, which ONNX Runtime's TensorRT
# provider loads by name. Downloads are staged in the system temp dir (/tmp).
# NVIDIA_DRIVER_CAPABILITIES: "video" makes the container toolkit mount the driver's NVDEC/NVENC
# libraries (libnvcuvid, libnvidia-encode), without which PyNvVideoCodec cannot load and
# DFS_DECODER=auto decodes on the CPU.
# ORT_DISABLE_TELEMETRY: onnxruntime's telemetry off: the service contacts nothing but the URLs it fetches.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 ORT_DISABLE_TELEMETRY=1 \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs:${LD_LIBRARY_PATH} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    DFS_HOST=0.0.0.0 DFS_PORT=8000 DFS_WORKERS=1 DFS_LOG_LEVEL=info \
    DFS_MODEL_REPOSITORY=/opt/dfs/model_repository \
    DFS_ENGINE_CACHE=/var/cache/dfs/engines \
    DFS_DATA_DIR=/var/lib/dfs \
    DFS_RETINAFACE_WEIGHTS=/opt/dfs/weights/retinaface.pth \
    DFS_DEVICE=auto
WORKDIR /opt/dfs
USER 10001:10001
VOLUME ["/var/cache/dfs/engines"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/healthcheck"]
# python -m service reads DFS_HOST, DFS_PORT, DFS_WORKERS and DFS_LOG_LEVEL (uvicorn underneath).
ENTRYPOINT ["python", "-m", "service"]
