#!/usr/bin/env bash
# Pack what a GPU check machine lacks into parts small enough to travel beside the working tree.
#
# The lent GPU machines (see bench/gpu_check.sh) have torch, timm, OpenCV, scikit-image and
# onnxruntime (CPU) but not the web stack, PyAV or PyNvVideoCodec, cannot reach PyPI, and receive
# the checkout plus at most 64 MiB per call, of which the checkout (the default bundle included)
# takes ~36 MB. So this downloads the missing wheels for the machine's Python (cp312, x86-64),
# adds the shared test media (../shared does not travel), tars it all and splits it into
# .gpu_pack/partN folders of PART_MB each (ignored by git): one part travels per call.
#
#   scripts/gpu_pack.sh            # then follow the steps it prints
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${PART_MB:-22}
PY=${PYTHON:-python3}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

AV_VERSION=$(.venv/bin/python -c "import av; print(av.__version__)" 2>/dev/null || echo 18.1.0)
# Pinned together: pydantic pins its pydantic-core exactly.
WHEELS=(
  "av==$AV_VERSION" "PyNvVideoCodec==2.2.4"
  "fastapi==0.165.0" "starlette==1.10.0" "pydantic==2.14.4" "pydantic-core==2.50.5"
  "pydantic-settings==2.16.3" "python-dotenv==1.2.4" "uvicorn==0.54.0" "python-multipart==0.0.34"
  "annotated-types==0.8.0" "typing-inspection==0.4.5" "typing-extensions>=4.16"
)
mkdir -p "$STAGE/pack/wheels" "$STAGE/pack/media"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$STAGE/pack/wheels" "${WHEELS[@]}"
cp -r ../shared/data/videos ../shared/data/weights "$STAGE/pack/media/"

rm -rf .gpu_pack && mkdir -p .gpu_pack
tar -C "$STAGE" -cf "$STAGE/pack.tar" pack
split -b "${PART_MB}M" -d -a 1 "$STAGE/pack.tar" "$STAGE/part"
count=0
for part in "$STAGE"/part*; do
  count=$((count + 1))
  mkdir -p ".gpu_pack/part$count" && mv "$part" ".gpu_pack/part$count/data"
done
grep -qxF '/.gpu_pack/' .gitignore || echo '/.gpu_pack/' >> .gitignore
echo "packed $(du -sh "$STAGE/pack.tar" | cut -f1) into $count parts under .gpu_pack/"
echo "on the device, back to back (the machine stays warm ~30 s between calls):"
for i in $(seq 1 "$count"); do
  if [ "$i" -lt "$count" ]; then
    echo "  run(command='bash bench/gpu_check.sh stash $i', carry=['.gpu_pack/part$i'])"
  else
    echo "  run(command='bash bench/gpu_check.sh stash $i && bash bench/gpu_check.sh run env floor e2e', carry=['.gpu_pack/part$i'], timeout_s=560)"
    echo "  run(command='bash bench/gpu_check.sh run pytest_gpu train', timeout_s=300)   # at once: /tmp stays while warm"
  fi
done
