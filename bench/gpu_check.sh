#!/usr/bin/env bash
# The GPU checks of issues 3, 4 and 6 as ONE prepared device run (device time is scarce: 15 min a
# session, machine start included). Prepare here with scripts/gpu_pack.sh, which prints the calls:
#
#   bash bench/gpu_check.sh stash N     # copy the carried .gpu_pack/partN to /tmp (one call per part)
#   bash bench/gpu_check.sh run [STEP...]  # assemble + install (once per machine), then the steps
#                                          # (default: env floor e2e pytest_gpu train), results in $OUT
#
# Each step has its own time limit and writes its table to $OUT (a .txt) and, where the script
# supports it, JSON; a failing step does not stop the later ones. The machine has no
# onnxruntime-gpu (255 MB, see DEVELOPERS.md for carrying it), so engines run through the torch
# runtime there (bf16; random-init stand-ins of the same architectures where checkpoints are absent).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
STASH=/tmp/gpu_pack

case "${1:-}" in
  stash)
    mkdir -p "$STASH" && cp ".gpu_pack/part$2/data" "$STASH/part$2" && ls -la "$STASH"
    exit $?
    ;;
  run) shift ;;
  *) echo "usage: $0 stash N | run [env floor e2e pytest_gpu train]" >&2; exit 2 ;;
esac
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(env floor e2e pytest_gpu train)
wants() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }

# --- assemble and install (kept for later calls while the machine stays warm) -------------------
if [ ! -f /tmp/site/.installed ]; then
  ls "$STASH"/part* | sort -V | xargs cat > /tmp/pack.tar && tar -C /tmp -xf /tmp/pack.tar || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    /tmp/pack/wheels/*.whl && touch /tmp/site/.installed || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
MEDIA=/tmp/pack/media
# tests look for ../shared/data beside the checkout
mkdir -p ../shared 2>/dev/null && ln -sfn "$MEDIA" ../shared/data 2>/dev/null
RETINA=$MEDIA/weights/retinaface_mobilenet0.25_Final.pth
VIDEO=$MEDIA/videos/wild_fake_Adele.mp4

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its output
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)" | tee -a "$OUT/summary.txt"
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt"
  echo "=== $name: rc=$rc in $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
}

wants env && step env 30 bash -c 'nvidia-smi; python3 -c "import torch, av, PyNvVideoCodec as n; print(torch.__version__, torch.cuda.get_device_name(), av.__version__, n.__version__)"'
# issue 6: every detector against its FLOP/byte floor, torch bf16, and the decoders
wants floor && step floor 120 python3 bench/floor.py --device cuda --models ftcn,dcl,pcl_i2g,lib,advgame \
  --batches 1,8,32,128 --video "$VIDEO" --json "$OUT/floor.json"
# issue 6 acceptance: all five models (the bundle + the other three at random init: speed only),
# 10 s 1080p single-face video, 1/8/32 clients, against the FTCN deploy's recipe
REPO5=/tmp/repo5
wants e2e && step export5 90 bash -c "rm -rf $REPO5 && cp -r model_repository $REPO5 && for m in pcl_i2g lib advgame; \
  do python3 -m export --model \$m --random-init --out $REPO5 || exit 1; done"
wants e2e && step e2e 240 python3 bench/e2e.py --repository "$REPO5" --video "$VIDEO" --make-video 10 --height 1080 --device cuda \
  --retinaface-weights "$RETINA" --profiles service,baseline --clients 1,8,32 --requests 32 --baseline-requests 2 \
  --env DFS_RUNTIME=torch --env DFS_TORCH_DTYPE=bf16 --env DFS_DETECT_EVERY=4 --env DFS_BATCH_MAX_CLIPS=32 \
  --env DFS_MAX_CONCURRENT_REQUESTS=16 --soak 200 --json "$OUT/e2e.json"
# issue 6 (NVDEC, torch frame path, streams on CUDA), issue 3 (TensorRT where importable), runtimes
wants pytest_gpu && step pytest_gpu 120 python3 -m pytest -q -rs -s tests/service/test_nvdec.py \
  tests/service/test_gpu_frames.py tests/test_tensorrt.py tests/service/test_runtimes.py \
  tests/service/test_batcher.py tests/service/test_gpu_streams.py
# issue 4: every method trains a few steps on the GPU (samples/s, loss, peak memory per method)
wants train && step train 180 python3 bench/train.py --retinaface-weights "$RETINA" --max-frames 64 \
  --work /tmp/bench_train --steps 20 --batch-size 16 --workers 4 --timeout 60 --json "$OUT/train.json"
cat "$OUT/summary.txt"
