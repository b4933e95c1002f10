#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DISABLE_TELEMETRY=1  # onnxruntime telemetry off: nothing may phone home
scripts/setup.sh
scripts/lint.sh  # ruff: lint and format (pyproject.toml), seconds
exec .venv/bin/python -m pytest -ra "$@"
