#!/usr/bin/env bash
# Set up the environment and serve the API on http://127.0.0.1:8000.
#
# Models come from DFS_MODEL_REPOSITORY (default ./model_repository). If it holds none yet:
#   - FTCN_CHECKPOINT=/path/ftcn_tt.pth exports the official FTCN weights into it;
#   - otherwise an UNTRAINED random-init FTCN is exported so the API can be tried out. Its scores
#     mean nothing, and every response says so in "warnings".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
REPO=${DFS_MODEL_REPOSITORY:-model_repository}
if ! ls "$REPO"/*/*/manifest.json >/dev/null 2>&1; then
  if [ -n "${FTCN_CHECKPOINT:-}" ]; then
    python -m export --model ftcn --checkpoint "$FTCN_CHECKPOINT" --out "$REPO"
  else
    echo "No models in $REPO and no FTCN_CHECKPOINT: exporting an UNTRAINED demo FTCN (scores are meaningless)." >&2
    python -m export --model ftcn --random-init --out "$REPO"
  fi
fi
export DFS_MODEL_REPOSITORY="$REPO"
exec python -m service "$@"
