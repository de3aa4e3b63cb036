#!/usr/bin/env bash
# The one GPU check (issue 17): everything GPU-side in a single run of at most ~8 minutes on a
# machine with CUDA and no network, a short table last.
#
#   bash tools/gpu_check.sh --fetch       # here, with network: download the carried wheels
#   GPU_CHECK_LOGS=out/gpu bash tools/gpu_check.sh          # on the GPU machine
#   GPU_CHECK_DRY=1 bash tools/gpu_check.sh                 # CPU dry run (CI): tiny sizes
#
# Steps (each with its own time limit inside an overall budget; a failed step does not stop
# the others; each writes its full log to $GPU_CHECK_LOGS/<step>.log):
#   env        python, torch, CUDA device, megatron-core, Transformer Engine (present or absent)
#   install    the carried wheels from $GPU_CHECK_WHEELS (default gpu_wheels/) into a venv that
#              sees the image's packages (torch, transformers, triton), offline
#   build      pose_megatron's C++ extensions (pip install -e . without build isolation)
#   gpu-tests  the `-m gpu` test selection (what `tools/run_tests.sh -m gpu` runs; called
#              directly because run_tests.sh's set-up step installs from the network)
#   parity     HF logits with PoSE ids vs our model on CUDA, TP=1, fp32 and bf16
#   train      a short PoSE training run, bf16 + Megatron's distributed optimizer, one GPU
#   rope       bench/rope.py (per-sample RoPE step vs stock Megatron RoPE)
#   step       bench/step.py (whole training step, PoSE vs stock RoPE)
#   figure3    bench/step_time.py on a ~1B LLaMA: PoSE at window 2048 for targets 4k..32k vs
#              full-length training at those lengths (step time, CUDA peak memory, until OOM)
#   hybrid-mlm Megatron-LM's patched pretrain_hybrid.py with Megatron-Core's own, Transformer
#              Engine-only hybrid stack spec (tools/check_megatron_lm.sh HYBRID_ONLY=1
#              HYBRID_SPEC=te): a GPT checkpoint into a HybridModel through Megatron's
#              load-time translation, PoSE steps, HF export vs Megatron-LM's own load. Needs a
#              core_v0.19.0 checkout carried to the machine ($GPU_CHECK_MEGATRON_LM) and TE;
#              reported "skipped" without them (the CPU cannot build that spec: the CPU check
#              runs the local spec instead)
# The dry run (GPU_CHECK_DRY=1) runs every step on the CPU with tiny sizes in the current
# environment (.venv or $GPU_CHECK_PYTHON), skipping the install, so the script cannot rot.
#
# Environment: GPU_CHECK_LOGS (log folder; default a new temporary one), GPU_CHECK_WHEELS,
# GPU_CHECK_PYTHON (interpreter; default python3 on the GPU machine, .venv/bin/python dry),
# GPU_CHECK_BUDGET (seconds for the whole run; default 480, dry 900), GPU_CHECK_DRY,
# GPU_CHECK_MEGATRON_LM (a Megatron-LM core_v0.19.0 checkout, for the hybrid-mlm step).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# The carried wheels (Python 3.12, no network on the GPU image). megatron-core is the one the
# image lacks; the rest are small things the tests and the package import that the image may
# not have (pytest and hypothesis for the tests, setuptools to build the extensions).
WHEELS_SPEC=(megatron-core==0.19.2 sentencepiece==0.2.3 psutil "packaging>=24.2" tqdm
             pytest pluggy iniconfig hypothesis attrs sortedcontainers setuptools six)
WHEELS=${GPU_CHECK_WHEELS:-gpu_wheels}
CARRY_LIMIT=$((64 * 1024 * 1024))

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$WHEELS"
  "${GPU_CHECK_PYTHON:-.venv/bin/python}" -m pip download -q --no-deps --python-version 3.12 \
    --only-binary=:all: -d "$WHEELS" "${WHEELS_SPEC[@]}" || exit 1
  size=$(du -sb "$WHEELS" | cut -f1)
  echo "$WHEELS: $(ls "$WHEELS" | wc -l) wheels, $((size / 1024 / 1024)) MiB (carry limit 64 MiB)"
  [ "$size" -le "$CARRY_LIMIT" ] || { echo "error: $WHEELS exceeds 64 MiB"; exit 1; }
  exit 0
elif [ $# -gt 0 ]; then
  echo "error: unknown argument $1 (only --fetch; the rest is set by environment variables)" >&2
  exit 2
fi

DRY=${GPU_CHECK_DRY:-0}
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d)/gpu_check}
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)
BUDGET=${GPU_CHECK_BUDGET:-$( [ "$DRY" = 1 ] && echo 900 || echo 480 )}
# Per-step limits are set for the H200; the dry run's CPU steps get three times as long.
SCALE=$( [ "$DRY" = 1 ] && echo 3 || echo 1 )
START=$SECONDS
if [ "$DRY" = 1 ]; then
  PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
  DEVICE=cpu
  export CUDA_VISIBLE_DEVICES=""
else
  PY=${GPU_CHECK_PYTHON:-python3}
  DEVICE=cuda
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ROWS=()

# run_step NAME SECONDS CMD...: runs CMD with its output in $LOGS/NAME.log, within its own limit
# and what is left of the budget (keeping 10 s for the table); records ok/FAIL/timeout.
run_step() {
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local left=$((BUDGET - (SECONDS - START) - 10))
  if [ "$left" -lt 5 ]; then
    ROWS+=("$name|not run|0|no time left in the ${BUDGET} s budget")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[gpu_check] $name (limit ${limit} s) -> $LOGS/$name.log"
  local t0=$SECONDS
  # bash -c: the step may be one of the functions below (exported), which timeout cannot run.
  timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$? status=ok
  [ $rc -ne 0 ] && status="FAIL (exit $rc)"
  [ $rc -eq 124 ] && status="timeout (${limit} s)"
  ROWS+=("$name|$status|$((SECONDS - t0))|$(summary "$name")")
}

# The figure a step's row shows, read from its log.
summary() {
  local log="$LOGS/$1.log"
  case $1 in
    env) grep -E '^(device|transformer_engine|megatron_core)' "$log" | cut -c1-60 | tr '\n' ' ' ;;
    gpu-tests|parity) grep -E '[0-9]+ (passed|failed|skipped|error)' "$log" | tail -1 ;;
    train) grep -E 'iteration|iter ' "$log" | tail -1 | cut -c1-110 ;;
    rope) grep -E '^ratio per-sample' "$log" | tail -1 ;;
    step) grep -E '^whole-step ratio' "$log" | tail -1 ;;
    figure3) grep -E '^at target' "$log" | tr '\n' ' ' | cut -c1-160 ;;
    hybrid-mlm) grep -E '^(skipped|pretrain_hybrid)' "$log" | tail -1 | cut -c1-110 ;;
    *) tail -1 "$log" | cut -c1-110 ;;
  esac
}

env_report() {
  "$PY" - <<'PY'
import importlib.util, platform, sys
import torch
print(f"python {platform.python_version()} torch {torch.__version__} cuda {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible")
else:
    print("device none (CPU only)")
try:
    import megatron.core
    print(f"megatron_core {megatron.core.__version__}")
except Exception as err:  # noqa: BLE001
    print(f"megatron_core absent ({type(err).__name__}: {err})")
try:
    import transformer_engine
    print(f"transformer_engine {transformer_engine.__version__}")
except Exception as err:  # noqa: BLE001
    print(f"transformer_engine absent ({type(err).__name__}): TE spec, fused RoPE and "
          "context-parallel tests are skipped")
for mod in ("transformers", "triton", "pybind11", "sentencepiece", "pytest", "apex"):
    print(f"  {mod}: {'present' if importlib.util.find_spec(mod) else 'absent'}")
PY
}

install_wheels() {
  if [ "$DRY" = 1 ]; then
    echo "dry run: no install; the carried set is:"
    ls -l "$WHEELS" 2>/dev/null || echo "  $WHEELS absent (bash tools/gpu_check.sh --fetch makes it)"
    if [ -d "$WHEELS" ]; then
      size=$(du -sb "$WHEELS" | cut -f1)
      echo "$((size / 1024 / 1024)) MiB of 64 MiB"
      [ "$size" -le "$CARRY_LIMIT" ] || { echo "error: $WHEELS exceeds 64 MiB"; return 1; }
    fi
    return 0
  fi
  [ -d "$WHEELS" ] || { echo "error: $WHEELS not found (carry it; tools/gpu_check.sh --fetch)"; return 1; }
  # A venv over the image's site-packages: its CUDA torch, transformers and triton stay in use.
  "$PY" -m venv --system-site-packages .venv-gpu || return 1
  PY=$ROOT/.venv-gpu/bin/python  # for this step; the main shell switches after it
  "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl || return 1
  "$PY" -c "import megatron.core, torch; print('megatron-core', megatron.core.__version__, 'torch', torch.__version__)"
}

build_extensions() {
  if [ "$DRY" = 1 ]; then  # built by tools/setup_env.sh already; check they import
    "$PY" -c "import pose_megatron._positions, pose_megatron._sample_index; print('extensions import')"
    return
  fi
  "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e . &&
    "$PY" -c "import pose_megatron._positions, pose_megatron._sample_index; print('extensions built')"
}

train_run() {
  local iters=10 extra=(--bf16 --use-distributed-optimizer)
  # Dry: fp32, one optimizer (bf16 training and the distributed optimizer are refused on the CPU).
  [ "$DRY" = 1 ] && iters=3 extra=()
  local flags=(--mock-data --device "$DEVICE" --num-layers 2 --hidden-size 256
               --num-attention-heads 4 --num-query-groups 2 --vocab-size 1024
               --pose-train-len 256 --pose-target-len 4096 --rope-scaling-type linear
               --micro-batch-size 2 --global-batch-size 4 --train-iters "$iters" --lr 1e-3
               --lr-warmup-iters 2 --log-interval 5 --log-json "$LOGS/train.jsonl" "${extra[@]}")
  rm -f "$LOGS/train.jsonl"
  "$PY" -m pose_megatron.train "${flags[@]}" && "$PY" - "$LOGS/train.jsonl" <<'PY'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
losses = [r["loss"] for r in rows]
assert rows and all(math.isfinite(x) for x in losses), losses
print(f"iterations {len(rows)}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
PY
}

hybrid_mlm() {
  local mlm=${GPU_CHECK_MEGATRON_LM:-}
  if [ -z "$mlm" ] || [ ! -f "$mlm/pretrain_hybrid.py" ]; then
    echo "skipped: no Megatron-LM core_v0.19.0 checkout (set GPU_CHECK_MEGATRON_LM)"; return 0
  fi
  if ! "$PY" -c "import transformer_engine" 2>/dev/null; then
    [ "$DRY" = 1 ] || { echo "skipped: Transformer Engine absent (the TE-only hybrid spec cannot be built)"; return 0; }
  fi
  # dry: the same run with the local spec (TE is never on the CPU); one iteration each
  PYTHON=$PY HYBRID_ONLY=1 ITERS_PER_TYPE=1 HYBRID_SPEC=$( [ "$DRY" = 1 ] && echo local || echo te ) \
    bash "$ROOT/tools/check_megatron_lm.sh" "$mlm" "$LOGS/hybrid_mlm_work"
}

if [ "$DRY" = 1 ]; then
  PARITY_ENV=(env GPU_CHECK_DEVICE=cpu)
  ROPE_ARGS=(--device cpu --seq 64 --batch 2 --heads 4 --groups 2 --head-dim 16 --repeats 2 --inner 1)
  STEP_ARGS=(--device cpu --layers 1 --hidden 64 --heads 4 --vocab 256 --seq 64 --repeats 2 --inner 1)
  FIG3_ARGS=(--device cpu --train-len 64 --targets 128 --layers 1 --hidden 64 --vocab 256
             --steps 1 --warmup 1)
  GPU_TESTS=(-m gpu tests/test_gpu_check.py tests/test_train_gpu.py)
else
  PARITY_ENV=(env)
  ROPE_ARGS=(--device cuda)
  STEP_ARGS=(--device cuda --layers 4 --hidden 2048 --heads 16 --vocab 32000 --seq 2048
             --micro-batch 1 --train-flags "--bf16 --num-query-groups 4 --ffn-hidden-size 5632")
  # ~1B LLaMA: 18 layers, hidden 2048, GQA 16:4, FFN 5632, vocab 32000 (~1.0B parameters).
  FIG3_ARGS=(--device cuda --train-len 2048 --targets 4096 8192 16384 32768 --layers 18
             --hidden 2048 --heads 16 --vocab 32000 --steps 3 --warmup 2
             --train-flags "--bf16 --use-distributed-optimizer --num-query-groups 4 --ffn-hidden-size 5632")
  GPU_TESTS=(-m gpu tests)
fi

export DRY PY LOGS WHEELS CARRY_LIMIT DEVICE ROOT
export -f env_report install_wheels build_extensions train_run hybrid_mlm
echo "[gpu_check] $( [ "$DRY" = 1 ] && echo "DRY RUN on the CPU" || echo "GPU run" ); logs in $LOGS; budget ${BUDGET} s"
run_step install 90 install_wheels
if [ "$DRY" != 1 ] && [ -x .venv-gpu/bin/python ]; then
  PY=$ROOT/.venv-gpu/bin/python
  export PY
fi
run_step build 120 build_extensions
run_step env 60 env_report
run_step parity 90 "${PARITY_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider -s -m gpu \
  tests/test_gpu_check.py -k cuda_logits
run_step train 90 train_run
run_step rope 45 "$PY" bench/rope.py "${ROPE_ARGS[@]}"
run_step step 75 "$PY" bench/step.py "${STEP_ARGS[@]}"
run_step gpu-tests 90 "$PY" -m pytest -q -p no:cacheprovider -rs "${GPU_TESTS[@]}"
run_step figure3 240 "$PY" bench/step_time.py "${FIG3_ARGS[@]}"
run_step hybrid-mlm 150 hybrid_mlm

# Full tables of the benches, then the short table last.
echo
grep -E 'parity ' "$LOGS/parity.log" 2>/dev/null | sed 's/^/  /'
sed -n '/^LLaMA/,$p' "$LOGS/figure3.log" 2>/dev/null
grep -E '^SKIPPED' "$LOGS/gpu-tests.log" 2>/dev/null | cut -c1-150
echo
printf '%-10s | %-16s | %5s | %s\n' step status s "figure"
printf -- '-----------+------------------+-------+------------------------------------------\n'
failed=0
for row in "${ROWS[@]}"; do
  IFS='|' read -r name status secs figure <<<"$row"
  printf '%-10s | %-16s | %5s | %s\n' "$name" "$status" "$secs" "$figure"
  [ "$status" = ok ] || failed=1
done
echo "total $((SECONDS - START)) s of ${BUDGET} s; $( [ "$DRY" = 1 ] && echo "dry run (CPU, tiny sizes)" || echo "on $DEVICE" ); logs: $LOGS"
exit $failed
