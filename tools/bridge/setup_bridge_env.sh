#!/usr/bin/env bash
# Build .venv-bridge: Megatron-Bridge 0.6.2 on the CPU, for tools/check_bridge.sh only.
#
# Bridge 0.6.2 declares Python >= 3.12 and a CUDA stack (Transformer Engine, flashinfer, ...).
# What it needs to import and to convert a LLaMA on the CPU was found by running it: the list
# below is that and nothing more. Python 3.11 (the local CPU torch wheel is cp311), so Bridge,
# megatron-core 0.19.2 and nvidia-modelopt go in with --ignore-requires-python --no-deps;
# tools/bridge/cpu_shim.py supplies typing.override (3.12) and a stand-in for the one
# Transformer Engine import Bridge makes unconditionally. torch is installed first and pinned in
# every later call, so nothing can pull the CUDA build.
#   VENV=.venv-bridge PYTHON=python3.11 bash tools/bridge/setup_bridge_env.sh
# DEPS_ONLY=1: everything but this tree (see tools/setup_env.sh; CI runs it beside a test suite).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv-bridge}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.bridge_installed"
want="$(cat tools/bridge/setup_bridge_env.sh setup.py | sha1sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v -e "^WARNING: Location" -e "requires .*, which is not installed" -e "dependency resolver does not" || true; }
deps_stamp="$VENV/.bridge_deps"
if [ ! -f "$deps_stamp" ] || [ "$(cat "$deps_stamp")" != "$want" ]; then
  echo "[bridge-env] $TORCH_SPEC"
  pip install -q "$TORCH_SPEC"
  echo "[bridge-env] megatron-core 0.19.2, megatron-bridge 0.6.2, nvidia-modelopt 0.47.0 (--no-deps)"
  pip install -q --ignore-requires-python --no-deps "megatron-core==0.19.2" "megatron-bridge==0.6.2" \
    "nvidia-modelopt==0.47.0"
  echo "[bridge-env] the packages Bridge imports for a LLaMA conversion"
  # transformers: Bridge 0.6.2 pins <=5.12.1 (5.24 lacks modeling_attn_mask_utils it imports);
  # triton: megatron-core 0.19; modelopt: scipy, pulp, requests, nvidia-ml-py; Bridge's data and
  # training modules: megatron-energon, datasets, tensorboard, omegaconf, hydra-core.
  pip install -q "$TORCH_SPEC" "transformers==5.12.1" safetensors numpy "packaging>=24.2" pyyaml \
    "omegaconf>=2.3" "hydra-core>=1.3.4,<1.4" tqdm rich six regex einops accelerate sentencepiece \
    psutil pybind11 triton requests pulp scipy nvidia-ml-py "megatron-energon==7.4.1" \
    "datasets>=2.20.0" "tensorboard>=2.19.0" pytest
  echo "$want" > "$deps_stamp"
fi
if [ "${DEPS_ONLY:-0}" = 1 ]; then
  echo "[bridge-env] dependencies installed in $VENV (DEPS_ONLY: this tree not yet)"
  exit 0
fi
# bridge_check.py imports pose_megatron.cpu_shims: this tree, editable (setup.py is in the stamp)
echo "[bridge-env] pose_megatron from this tree (editable, --no-deps)"
pip install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" tools/bridge/bridge_check.py versions
echo "$want" > "$stamp"
