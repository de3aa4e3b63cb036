#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest, e.g.
#   bash tools/run_tests.sh -m slow        # only the slow tests
#   bash tools/run_tests.sh -m "slow or not slow"   # everything
# VENV and MCORE select another environment (built by tools/setup_env.sh with the same variables):
#   VENV=.venv-mcore019 MCORE=0.19.2 bash tools/run_tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export VENV MCORE="${MCORE:-}"
bash tools/setup_env.sh
if [ $# -eq 0 ]; then set -- -m "not slow and not gpu"; fi
# The CPU suite runs Megatron-Core through the CPU shims, which refuse where CUDA is visible: on
# a GPU machine a selection that excludes the gpu tests hides the GPUs from it (`-m gpu` sees them).
case "$*" in *"not gpu"*) export CUDA_VISIBLE_DEVICES="" ;; esac
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
