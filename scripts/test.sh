#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
