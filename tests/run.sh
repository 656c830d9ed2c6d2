#!/usr/bin/env bash
# The checks, from nothing: makes or reuses the project's virtual environment .venv (pipeline/venv.sh:
# PyTorch's CPU build where no GPU is visible, then ddpm with its test tools), then runs ruff and the
# test suite. Arguments go to pytest: `bash tests/run.sh -m "not slow"` is the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
. pipeline/venv.sh
ruff check .
ruff format --check .
pytest "$@"
