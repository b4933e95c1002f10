#!/usr/bin/env bash
# Set up the environment and serve the API on http://127.0.0.1:8000.
#
# Models come from DFS_MODEL_REPOSITORY (default ./model_repository, which ships the default bundle:
# DCL-MobileNetV2 + FTCN trained by training/recipes/default_bundle.sh; see training/RECIPES.md).
#   - FTCN_CHECKPOINT=/path/ftcn_tt.pth exports the official FTCN weights into it as a new version
#     (the highest version serves), once: a version made from the same file is not exported again;
#   - a repository with no models at all gets an UNTRAINED random-init FTCN so the API can be
#     tried out. Its scores mean nothing, and every response says so in "warnings".
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DISABLE_TELEMETRY=1  # onnxruntime telemetry off: nothing may phone home
scripts/setup.sh
. .venv/bin/activate
REPO=${DFS_MODEL_REPOSITORY:-model_repository}
if [ -n "${FTCN_CHECKPOINT:-}" ]; then
  SHA=$(sha256sum "$FTCN_CHECKPOINT" | cut -d' ' -f1)
  if ! grep -qs "\"$SHA\"" "$REPO"/ftcn/*/manifest.json; then
    python -m export --model ftcn --checkpoint "$FTCN_CHECKPOINT" --out "$REPO"
  fi
elif ! ls "$REPO"/*/*/manifest.json >/dev/null 2>&1; then
  echo "No models in $REPO and no FTCN_CHECKPOINT: exporting an UNTRAINED demo FTCN (scores are meaningless)." >&2
  python -m export --model ftcn --random-init --out "$REPO"
fi
export DFS_MODEL_REPOSITORY="$REPO"
exec python -m service "$@"
