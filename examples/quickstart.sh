#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job on a tiny bundled default.
#   bash examples/quickstart.sh            # everything, into runs/quickstart/
# Steps (each prints what it did):
#   1. create .venv and install pose_megatron (tools/setup_env.sh; skipped when up to date)
#   2. show PoSE positions for 2k -> 16k and their coverage of the target window (PNG)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"
PY=.venv/bin/python

echo "== PoSE positions, 2048 -> 16384, and how they cover the target window"
$PY -m pose_megatron.positions --train-len 2048 --target-len 16384 --samples 100000 \
  --plot "$OUT/coverage.png"
echo "== done: outputs in $OUT/"
