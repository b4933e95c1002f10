#!/usr/bin/env bash
# Lint and format check with ruff (configured in pyproject.toml); scripts/test.sh runs it first.
# `scripts/lint.sh --fix` applies the safe fixes and formats in place instead of checking.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF=.venv/bin/ruff
if [ "${1:-}" = "--fix" ]; then
    "$RUFF" check --fix .
    exec "$RUFF" format .
fi
"$RUFF" check .
"$RUFF" format --check .
