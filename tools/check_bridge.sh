#!/usr/bin/env bash
# Interop check against the real Megatron-Bridge 0.6.2 (docs/bridge.md), on the CPU:
#   1. a tiny random LLaMA in HF format (transformers)
#   2. Bridge's own HF -> Megatron import saves a Bridge checkpoint
#   3. OUR tools/convert_megatron_to_hf.py converts that to HF; logits vs the original
#   4. OUR tools/convert_hf_to_megatron.py --layout bridge converts the HF model
#   5. Bridge's loader (AutoBridge.load_megatron_model) loads ours; logits vs HF
#   6. Bridge exports ours back to HF (export_ckpt's calls); logits vs HF
#   7. a tiny Qwen3 with YaRN: ours --layout bridge -> Bridge's loader, logits vs HF; Bridge's
#      own import of it -> ours -> HF, logits vs HF
# Fails unless every max |logits difference| is <= 1e-4. Prints the timings of both importers.
#   bash tools/check_bridge.sh                 # builds .venv-bridge first if needed (~3 min)
#   WORK=/tmp/bridge-check KEEP=1 bash tools/check_bridge.sh
# VENV: the project's environment (default .venv); BRIDGE_VENV: Bridge's (default .venv-bridge).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BRIDGE_VENV=${BRIDGE_VENV:-.venv-bridge}
TOL=${TOL:-1e-4}
# an existing project environment is used as it is (PYTHONPATH below puts this tree first,
# also where VENV is another tree's; .venv-bridge has this tree installed)
[ -x "$VENV/bin/python" ] || VENV=$VENV bash tools/setup_env.sh
VENV=$BRIDGE_VENV bash tools/bridge/setup_bridge_env.sh
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
rm -rf "$WORK"/{hf,bridge_ckpt,ours_from_bridge_hf,ours_ckpt,bridge_export_hf,hf_qwen3,ours_qwen3}
rm -rf "$WORK"/{bridge_qwen3,ours_from_bridge_qwen3}
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES=""   # the CPU path, also on a GPU machine

step() {  # step NAME LOG CMD...: run, keep the log, record the RESULT line and the wall time
  local name=$1 log="$WORK/$2.log"; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  if ! "$@" > "$log" 2>&1; then
    echo "[bridge-check] FAILED: $name (log: $log)"; grep -E "Error|error:" "$log" | tail -5
    exit 1
  fi
  t1=$(date +%s.%N)
  local result
  result=$(grep '^RESULT ' "$log" | tail -1 | cut -c8- || true)
  [ -n "$result" ] || result='{}'
  "$VENV/bin/python" -c "import json,sys; d=json.loads(sys.argv[1]); d.update(name=sys.argv[2], wall_s=round(float(sys.argv[4])-float(sys.argv[3]),2)); print(json.dumps(d))" \
    "$result" "$name" "$t0" "$t1" >> "$RESULTS"
  echo "[bridge-check] $name: $(tail -1 "$RESULTS")"
}

B="$BRIDGE_VENV/bin/python tools/bridge/bridge_check.py"
step "make tiny HF LLaMA" make_hf $B make-hf --out "$WORK/hf"
step "Bridge import (HF -> Megatron)" bridge_import $B import --hf "$WORK/hf" --out "$WORK/bridge_ckpt"
step "ours: Bridge checkpoint -> HF" ours_to_hf "$VENV/bin/python" tools/convert_megatron_to_hf.py \
  --megatron-dir "$WORK/bridge_ckpt" --out "$WORK/ours_from_bridge_hf" --no-progress
step "logits: HF vs Bridge checkpoint via ours" logits1 $B logits --a "$WORK/hf" --b "$WORK/ours_from_bridge_hf"
step "ours: HF -> Megatron (--layout bridge)" ours_import "$VENV/bin/python" tools/convert_hf_to_megatron.py \
  --hf-dir "$WORK/hf" --out "$WORK/ours_ckpt" --layout bridge --no-progress
step "Bridge loads ours; logits vs HF" bridge_load $B load --hf "$WORK/hf" --ckpt "$WORK/ours_ckpt"
step "Bridge loads its own; logits vs HF" bridge_load_own $B load --hf "$WORK/hf" --ckpt "$WORK/bridge_ckpt"
step "Bridge exports ours to HF" bridge_export $B export --hf "$WORK/hf" --ckpt "$WORK/ours_ckpt" \
  --out "$WORK/bridge_export_hf"
step "logits: HF vs ours exported by Bridge" logits2 $B logits --a "$WORK/hf" --b "$WORK/bridge_export_hf"
# Qwen3 with YaRN (QK norm, head_dim 24 != 64/4, tied, factor 4 over 64): ours -> Bridge's loader
step "make tiny HF Qwen3 (YaRN)" make_qwen3 $B make-hf --family qwen3 --out "$WORK/hf_qwen3"
step "ours: Qwen3 HF -> Megatron (--layout bridge)" ours_import_qwen3 "$VENV/bin/python" \
  tools/convert_hf_to_megatron.py --hf-dir "$WORK/hf_qwen3" --out "$WORK/ours_qwen3" --layout bridge \
  --no-progress
step "Bridge loads ours (Qwen3, YaRN); logits vs HF" bridge_load_qwen3 $B load --hf "$WORK/hf_qwen3" \
  --ckpt "$WORK/ours_qwen3"
step "Bridge import of Qwen3 (YaRN)" bridge_import_qwen3 $B import --hf "$WORK/hf_qwen3" \
  --out "$WORK/bridge_qwen3"
step "ours: Bridge's Qwen3 checkpoint -> HF" ours_to_hf_qwen3 "$VENV/bin/python" \
  tools/convert_megatron_to_hf.py --megatron-dir "$WORK/bridge_qwen3" --out "$WORK/ours_from_bridge_qwen3" \
  --no-progress
step "logits: HF vs Bridge's Qwen3 checkpoint via ours" logits_qwen3 $B logits --a "$WORK/hf_qwen3" \
  --b "$WORK/ours_from_bridge_qwen3"

"$VENV/bin/python" - "$RESULTS" "$TOL" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
tol = float(sys.argv[2])
print("\n[bridge-check] summary")
bad = []
for r in rows:
    extra = {k: v for k, v in r.items() if k in ("max_abs_diff", "import_s", "convert_s", "load_s", "export_s")}
    print(f"  {r['name']:<42} wall {r['wall_s']:>6.2f} s  {extra}")
    if "max_abs_diff" in r and not r["max_abs_diff"] <= tol:
        bad.append(r["name"])
by = {r["name"]: r for r in rows}
b, o = by["Bridge import (HF -> Megatron)"], by["ours: HF -> Megatron (--layout bridge)"]
print(f"  HF -> Megatron: Bridge {b['wall_s']:.2f} s wall ({b['import_s']:.2f} s importing Bridge, "
      f"{b['convert_s']:.2f} s converting), ours {o['wall_s']:.2f} s wall")
if bad:
    print(f"[bridge-check] FAILED: logits differ by more than {tol}: {bad}")
    sys.exit(1)
print(f"[bridge-check] OK: every max |logits difference| <= {tol}")
PY
