#!/usr/bin/env bash
# Check the plugin against a real Megatron-LM checkout (release tag core_v0.16.1 or core_v0.19.0):
#   bash tools/check_megatron_lm.sh MEGATRON_LM_DIR [WORK_DIR]
# 0. compares the dest names and defaults of every Megatron-LM flag the converters read or write
#    with the checkout's own parser (tools/megatron_lm/check_dests.py);
# 1. copies the checkout, applies examples/megatron_lm/pretrain_gpt_core_vX.patch (git apply);
# 2. runs PoSE iterations of the real, patched pretrain_gpt.py on the bundled corpus (window 64 ->
#    target 512, linear RoPE scaling), saving torch_dist and legacy (torch) checkpoints;
# 3. converts each saved checkpoint to HF with tools/convert_megatron_to_hf.py (from the args in
#    its common state; no pose_model.json), and compares the HF logits with Megatron-LM's own load
#    of it (load_checkpoint + the script's model_provider) at 64 and 512 tokens, within 1e-4;
# 4. converts a tiny HF model with tools/convert_hf_to_megatron.py and loads it in Megatron-LM
#    three ways, comparing with the HF logits within 1e-4: --use-checkpoint-args (no model-size
#    flags); --load alone with the position-embedding convention of Megatron-LM's
#    examples/llama/train_llama3_8b_h100_fp8.sh (--position-embedding-type rope only); --load
#    alone with --no-position-embedding (its LLaMA-2 docs), converted with that flag;
# 5. trains every --rope-scaling-type (with its own parameters) with the same script, exports
#    each to HF and compares Megatron-LM's own load with transformers' at 64 and 512 tokens;
# 6. (core_v0.19.0) applies examples/megatron_lm/pretrain_hybrid_core_v0.19.0.patch too and runs
#    the patched pretrain_hybrid.py: a HybridModel ('*-' per block) loads a GPT checkpoint of the
#    steps above through Megatron's load-time translation, PoSE-trains and saves; its hybrid
#    checkpoint converts to HF and matches Megatron-LM's own load of it within 1e-4. Without
#    Transformer Engine (a CPU) the stack spec is pose_megatron.hybrid_local_spec (local layers);
#    with TE it is Megatron-Core's own, TE-only hybrid_stack_spec (HYBRID_SPEC=te|local).
# 7. trains a Qwen3-shaped model (--qk-layernorm, --kv-channels 24 != hidden/heads 16, tied
#    embeddings, rope base 1e6, PoSE with YaRN), exports it (Qwen3ForCausalLM, from the saved
#    args) and compares Megatron-LM's own load with transformers' the same way.
# Megatron-LM's source is read and run beside the project, never copied into it. On a machine
# without a GPU, Megatron-LM's training loop runs with the CPU redirects of
# tools/megatron_lm/sitecustomize.py (test scaffolding only). Environment:
#   PYTHON   the interpreter (default: .venv for 0.16, .venv-mcore019 for 0.19)
#   ITERS    PoSE iterations (default 4)
#   ROPE_TYPES      the types of step 5 (default: all eight); ITERS_PER_TYPE (default 1)
#   TYPES_ONLY=1    run step 5 (and 6) only; HYBRID_ONLY=1: step 6 only (0.19); QWEN3_ONLY=1:
#                   step 7 only
# Installs into that environment what Megatron-LM's tree imports beyond the megatron-core wheel's
# requirements (six, triton: the checkout's own megatron/ comes first on PYTHONPATH), and
# on Python 3.11 for 0.19 a .pth that gives typing.override from typing_extensions (0.19's
# megatron.training imports it; a .pth because its checkpoint writer is a spawned process).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 MEGATRON_LM_DIR [WORK_DIR]" >&2; exit 2; }
MLM_SRC=$(cd "$1" && pwd) || { echo "error: $1: no such directory" >&2; exit 2; }
WORK=${2:-$(mktemp -d -t check_megatron_lm.XXXXXX)}
ITERS=${ITERS:-4}
[ -f "$MLM_SRC/pretrain_gpt.py" ] && [ -f "$MLM_SRC/megatron/core/package_info.py" ] ||
  { echo "error: $MLM_SRC is not a Megatron-LM checkout (no pretrain_gpt.py)" >&2; exit 2; }
MINOR=$(sed -n 's/^MINOR *= *\([0-9]*\).*/\1/p' "$MLM_SRC/megatron/core/package_info.py")
case "$MINOR" in
  16) TAG=core_v0.16.1; DEFAULT_PY=$ROOT/.venv/bin/python ;;
  19) TAG=core_v0.19.0; DEFAULT_PY=$ROOT/.venv-mcore019/bin/python ;;
  *) echo "error: $MLM_SRC is Megatron-LM 0.$MINOR; patches exist for core_v0.16.1 and core_v0.19.0" >&2
     exit 2 ;;
esac
PY=${PYTHON:-$DEFAULT_PY}
# --vocab-size that gives NullTokenizer 2000 rows (the tiny HF model's): core_v0.16's legacy
# NullTokenizer adds its end-of-document token beyond --vocab-size, core_v0.19's counts it within.
NULL_VOCAB_2000=$([ "$MINOR" = 16 ] && echo 1999 || echo 2000)
PATCH=$ROOT/examples/megatron_lm/pretrain_gpt_$TAG.patch
mkdir -p "$WORK"
echo "== $TAG: work in $WORK, python $PY"
T0=$(date +%s)

echo "== 1. copy of the checkout, patched"
rm -rf "$WORK/mlm"
mkdir -p "$WORK/mlm"
tar -C "$MLM_SRC" --exclude=.git -cf - . | tar -C "$WORK/mlm" -xf -
(cd "$WORK/mlm" && git apply --check "$PATCH" && git apply "$PATCH")
echo "applied $(basename "$PATCH")"
HYBRID_PATCH=$ROOT/examples/megatron_lm/pretrain_hybrid_$TAG.patch
if [ -f "$HYBRID_PATCH" ]; then
  (cd "$WORK/mlm" && git apply --check "$HYBRID_PATCH" && git apply "$HYBRID_PATCH")
  echo "applied $(basename "$HYBRID_PATCH")"
fi

"$PY" -c "import six, triton" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0" six triton
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! "$PY" -c "import typing, sys; sys.exit(0 if hasattr(typing, 'override') else 1)"; then
  echo "import typing, typing_extensions; typing.override = getattr(typing, 'override', typing_extensions.override)" \
    > "$SITE/pose_megatron_typing_override.pth"
  echo "added $SITE/pose_megatron_typing_override.pth (typing.override for Python < 3.12)"
fi

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=gpu
else
  DEVICE=cpu
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# The environment of the Megatron-LM processes only (the converters and the HF side run plain):
# the patched checkout and the redirects on the path, torch.distributed's env:// rendezvous of a
# one-process job.
DIST_ENV=(PYTHONPATH="$ROOT/tools/megatron_lm:$WORK/mlm:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
          POSE_MEGATRON_LM_CPU=$([ "$DEVICE" = cpu ] && echo 1 || echo 0)
          CUDA_DEVICE_MAX_CONNECTIONS=1 MASTER_ADDR=127.0.0.1 RANK=0 LOCAL_RANK=0 WORLD_SIZE=1)
echo "device: $DEVICE"

echo "== 0. dest names and defaults of the model flags vs this checkout's parser"
env "${DIST_ENV[@]}" "$PY" "$ROOT/tools/megatron_lm/check_dests.py" 2> "$WORK/check_dests.err" ||
  { grep -E "^error" "$WORK/check_dests.err" >&2; echo "error: dest names differ from Megatron-LM's" >&2; exit 1; }

echo "== 2. bundled corpus"
[ -f "$WORK/data/corpus_text_document.idx" ] || "$PY" -m pose_megatron.data.corpus --out "$WORK/data"
DATA=$WORK/data/corpus_text_document
TOK=$WORK/data/tokenizer.model

free_port() { "$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
# Megatron-LM flags of a tiny LLaMA-shaped model (GQA, RMSNorm, SwiGLU, untied), local spec.
# Every value that the export maps differs from Megatron-LM's and HF's defaults (norm epsilon,
# RoPE base, FFN size, head size != hidden / heads, query groups, init std, a padded vocabulary),
# so a field read under the wrong name changes the logits.
MODEL=(--num-layers 2 --hidden-size 64 --ffn-hidden-size 96 --num-attention-heads 4
       --group-query-attention --num-query-groups 2 --kv-channels 24 --seq-length 64
       --max-position-embeddings 64 --position-embedding-type rope --rotary-base 50000
       --normalization RMSNorm --norm-epsilon 1e-6 --swiglu --disable-bias-linear
       --untie-embeddings-and-output-weights --init-method-std 0.013 --attention-dropout 0
       --hidden-dropout 0)
RUN=(--tokenizer-type NullTokenizer --vocab-size 2000 --make-vocab-size-divisible-by 128
     --micro-batch-size 2 --global-batch-size 2 --transformer-impl local
     --no-masked-softmax-fusion --no-bias-swiglu-fusion --no-rope-fusion
     --no-gradient-accumulation-fusion --no-persist-layer-norm --distributed-backend gloo
     --use-cpu-initialization --seed 1234)
[ "$DEVICE" = cpu ] && RUN+=(--clip-grad 0)  # Megatron-LM's clipping asserts CUDA tensors
POSE=(--pose-target-len 512 --rope-scaling-type linear)

declare -A SECONDS_OF=([train_torch_dist]=- [train_torch]=-)
if [ "${TYPES_ONLY:-0}" != 1 ] && [ "${HYBRID_ONLY:-0}" != 1 ] && [ "${QWEN3_ONLY:-0}" != 1 ]; then
for FMT in torch_dist torch; do
  echo "== 3. PoSE training with the patched pretrain_gpt.py: $ITERS iterations, --ckpt-format $FMT"
  SAVE=$WORK/pretrain_$FMT
  rm -rf "$SAVE" "$WORK/hf_$FMT"
  t=$(date +%s)
  env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$WORK/mlm/pretrain_gpt.py" "${MODEL[@]}" "${RUN[@]}" "${POSE[@]}" \
    --data-path "$DATA" --split 100,0,0 --train-iters "$ITERS" --lr 1e-3 --lr-decay-style constant \
    --eval-iters 0 --eval-interval 100000 --log-interval 1 --save "$SAVE" --save-interval "$ITERS" \
    --ckpt-format "$FMT" > "$WORK/pretrain_$FMT.log" 2>&1 ||
    { tail -30 "$WORK/pretrain_$FMT.log"; echo "error: pretrain_gpt.py failed" >&2; exit 1; }
  grep -E "\] iteration +[0-9]+/" "$WORK/pretrain_$FMT.log" | sed -E 's/^.*\] (iteration +[0-9]+\/ +[0-9]+).*(lm loss: [^|]*).*$/\1 | \2/'
  [ -f "$SAVE/latest_checkpointed_iteration.txt" ] ||
    { echo "error: pretrain_gpt.py saved no checkpoint (log: $WORK/pretrain_$FMT.log)" >&2; exit 1; }
  SECONDS_OF[train_$FMT]=$(( $(date +%s) - t ))
  echo "trained $ITERS iterations in ${SECONDS_OF[train_$FMT]} s; checkpoint $SAVE ($(cat "$SAVE/latest_checkpointed_iteration.txt"))"
  [ ! -e "$SAVE/pose_model.json" ] || { echo "error: $SAVE has a pose_model.json" >&2; exit 1; }

  echo "== 4. $FMT checkpoint -> HF (tools/convert_megatron_to_hf.py, from the saved args)"
  "$PY" "$ROOT/tools/convert_megatron_to_hf.py" --megatron-dir "$SAVE" --out "$WORK/hf_$FMT" \
    --tokenizer "$TOK" --no-progress
  "$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); print('config.json rope:', c.get('rope_scaling'), 'theta', c.get('rope_theta'))" \
    "$WORK/hf_$FMT/config.json"

  echo "== 5. Megatron-LM's own load of it (load_checkpoint + pose_model_provider) vs HF"
  env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$ROOT/tools/megatron_lm/mlm_logits.py" --pose \
    --out "$WORK/mlm_$FMT.pt" --lengths 64 512 -- "${MODEL[@]}" "${RUN[@]}" "${POSE[@]}" \
    --load "$SAVE" --ckpt-format "$FMT" --no-load-optim --no-load-rng > "$WORK/mlm_$FMT.log" 2>&1 ||
    { tail -30 "$WORK/mlm_$FMT.log"; echo "error: Megatron-LM could not load $SAVE" >&2; exit 1; }
  "$PY" "$ROOT/tools/megatron_lm/compare_logits.py" --hf "$WORK/hf_$FMT" \
    --megatron "$WORK/mlm_$FMT.pt" --tol 1e-4 --label "pretrain() $FMT checkpoint: "
done

echo "== 6. tiny HF model -> Megatron (tools/convert_hf_to_megatron.py) -> Megatron-LM, three ways"
rm -rf "$WORK/hf_tiny" "$WORK/converted" "$WORK/converted_nope"
# non-default norm epsilon, RoPE base, FFN and head sizes (the export and the load must carry them)
"$PY" "$ROOT/tools/make_tiny_llama.py" --out "$WORK/hf_tiny" --tokenizer-model "$TOK" \
  --hidden-size 64 --intermediate-size 96 --head-dim 24 --rms-norm-eps 3e-6 --rope-theta 50000
"$PY" "$ROOT/tools/convert_hf_to_megatron.py" --hf-dir "$WORK/hf_tiny" --out "$WORK/converted" \
  --no-progress
"$PY" "$ROOT/tools/convert_hf_to_megatron.py" --hf-dir "$WORK/hf_tiny" \
  --out "$WORK/converted_nope" --no-position-embedding --no-progress
EPS=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['rms_norm_eps'])" "$WORK/hf_tiny/config.json")
LOAD_RUN=(--tokenizer-type NullTokenizer --vocab-size 2000 --micro-batch-size 1
  --transformer-impl local --no-masked-softmax-fusion --no-bias-swiglu-fusion --no-rope-fusion
  --no-gradient-accumulation-fusion --no-persist-layer-norm --distributed-backend gloo
  --use-cpu-initialization --no-load-optim --no-load-rng)
# the tiny model's own flags, as a job that does not take them from the checkpoint passes them
TINY=(--num-layers 2 --hidden-size 64 --ffn-hidden-size 96 --num-attention-heads 4
  --group-query-attention --num-query-groups 2 --kv-channels 24 --seq-length 64
  --max-position-embeddings 64 --position-embedding-type rope --rotary-base 50000
  --rotary-percent 1.0 --normalization RMSNorm --norm-epsilon "$EPS" --swiglu
  --disable-bias-linear --untie-embeddings-and-output-weights --attention-dropout 0.0
  --hidden-dropout 0.0 --make-vocab-size-divisible-by 1 --vocab-size "$NULL_VOCAB_2000")
load_converted() {  # LABEL CHECKPOINT ARGS...
  local label=$1 ckpt=$2
  shift 2
  env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$ROOT/tools/megatron_lm/mlm_logits.py" \
    --out "$WORK/mlm_$label.pt" --lengths 64 512 -- --load "$ckpt" "${LOAD_RUN[@]}" "$@" \
    > "$WORK/mlm_$label.log" 2>&1 ||
    { tail -30 "$WORK/mlm_$label.log"; echo "error: Megatron-LM could not load $ckpt ($label)" >&2; exit 1; }
  "$PY" "$ROOT/tools/megatron_lm/compare_logits.py" --hf "$WORK/hf_tiny" \
    --megatron "$WORK/mlm_$label.pt" --tol 1e-4 --label "converted, $label: "
}
# No model-size flags: the shape comes from the checkpoint's args. --norm-epsilon is not among
# the fields Megatron-LM takes from a checkpoint, so it is passed.
load_converted use-checkpoint-args "$WORK/converted" --use-checkpoint-args --norm-epsilon "$EPS"
grep -E "Setting (num_layers|hidden_size|kv_channels|num_query_groups|rotary_base|padded_vocab_size) to" \
  "$WORK/mlm_use-checkpoint-args.log" | sort -u || true
# Megatron-LM's load_checkpoint compares add_position_embedding with the job's unless
# --use-checkpoint-args: the default conversion matches its default (examples/llama's LLaMA-3
# convention), one converted with --no-position-embedding matches jobs passing that flag.
load_converted load-llama3-example-flags "$WORK/converted" "${TINY[@]}"
load_converted load-no-position-embedding "$WORK/converted_nope" "${TINY[@]}" --no-position-embedding
load_converted use-checkpoint-args-no-position-embedding "$WORK/converted" --use-checkpoint-args \
  --norm-epsilon "$EPS" --no-position-embedding
fi
echo "== 7. every --rope-scaling-type through pretrain_gpt.py: train, export, Megatron-LM's load vs HF"
# Each type with its own parameters (tests/rope_type_flags.py, the table the CLI test uses):
# ITERS_PER_TYPE iterations saved as torch_dist, converted from the saved args, and compared at
# 64 and 512 tokens (past the 64-token window, where the scaling matters) within 1e-4.
ITERS_PER_TYPE=${ITERS_PER_TYPE:-1}
TYPES_SUMMARY=()
ALL_TYPES="none linear ntk dynamic yarn yarn_pose llama3 longrope"
[ "${HYBRID_ONLY:-0}" = 1 ] && ALL_TYPES=linear  # step 6 starts from the linear checkpoint
[ "${QWEN3_ONLY:-0}" = 1 ] && ALL_TYPES=
for KIND in ${ROPE_TYPES:-$ALL_TYPES}; do
  mapfile -t EXTRA < <(cd "$ROOT" && "$PY" -m tests.rope_type_flags "$KIND" 24)  # --kv-channels 24
  # plain RoPE has no extended window: the model's own window is the target
  WINDOW=(); [ "$KIND" = none ] && WINDOW=(--max-position-embeddings 512)
  KPOSE=(--pose-target-len 512 --rope-scaling-type "$KIND" "${EXTRA[@]}")
  SAVE=$WORK/type_$KIND
  rm -rf "$SAVE" "$WORK/hf_type_$KIND"
  t=$(date +%s)
  env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$WORK/mlm/pretrain_gpt.py" "${MODEL[@]}" "${WINDOW[@]}" \
    "${RUN[@]}" "${KPOSE[@]}" --data-path "$DATA" --split 100,0,0 --train-iters "$ITERS_PER_TYPE" \
    --lr 1e-3 --lr-decay-style constant --eval-iters 0 --eval-interval 100000 --log-interval 1 \
    --save "$SAVE" --save-interval "$ITERS_PER_TYPE" --ckpt-format torch_dist \
    > "$WORK/type_$KIND.log" 2>&1 ||
    { tail -30 "$WORK/type_$KIND.log"; echo "error: pretrain_gpt.py --rope-scaling-type $KIND failed" >&2; exit 1; }
  LOSS=$(grep -E "\] iteration +[0-9]+/" "$WORK/type_$KIND.log" | tail -1 | sed -E 's/^.*lm loss: ([^ |]*).*$/\1/')
  "$PY" "$ROOT/tools/convert_megatron_to_hf.py" --megatron-dir "$SAVE" --out "$WORK/hf_type_$KIND" \
    --tokenizer "$TOK" --no-progress > "$WORK/hf_type_$KIND.log" 2>&1 ||
    { cat "$WORK/hf_type_$KIND.log"; echo "error: export of the $KIND checkpoint failed" >&2; exit 1; }
  HF_ROPE=$("$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); r=c.get('rope_parameters') or c.get('rope_scaling') or {}; print(r.get('rope_type', 'default'), 'factor', r.get('factor', '-'), 'theta', r.get('rope_theta', c.get('rope_theta')))" \
    "$WORK/hf_type_$KIND/config.json")
  env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$ROOT/tools/megatron_lm/mlm_logits.py" --pose \
    --out "$WORK/mlm_type_$KIND.pt" --lengths 64 512 -- "${MODEL[@]}" "${WINDOW[@]}" "${RUN[@]}" "${KPOSE[@]}" \
    --load "$SAVE" --ckpt-format torch_dist --no-load-optim --no-load-rng > "$WORK/mlm_type_$KIND.log" 2>&1 ||
    { tail -30 "$WORK/mlm_type_$KIND.log"; echo "error: Megatron-LM could not load $SAVE" >&2; exit 1; }
  "$PY" "$ROOT/tools/megatron_lm/compare_logits.py" --hf "$WORK/hf_type_$KIND" \
    --megatron "$WORK/mlm_type_$KIND.pt" --tol 1e-4 --label "$KIND: "
  TYPES_SUMMARY+=("$KIND: lm loss $LOSS, HF config $HF_ROPE, $(( $(date +%s) - t )) s")
done
[ ${#TYPES_SUMMARY[@]} = 0 ] || printf '  %s\n' "${TYPES_SUMMARY[@]}"

if [ -f "$HYBRID_PATCH" ]; then
  echo "== 8. pretrain_hybrid.py: a GPT checkpoint into a HybridModel, PoSE-trained, exported"
  SRC=$WORK/type_linear  # step 7's GPT checkpoint (linear, torch_dist)
  if [ ! -f "$SRC/latest_checkpointed_iteration.txt" ]; then
    echo "error: step 8 starts from $SRC (step 7 with linear among ROPE_TYPES)" >&2; exit 1
  fi
  HSPEC=${HYBRID_SPEC:-$("$PY" -c "import importlib.util as u; print('te' if u.find_spec('transformer_engine') else 'local')")}
  if [ "$HSPEC" = te ]; then
    # Megatron-Core's own hybrid stack spec: Transformer Engine modules only (GPU)
    HYBRID=(--hybrid-layer-pattern '*-*-' --spec megatron.core.models.hybrid.hybrid_layer_specs hybrid_stack_spec)
    HRUN=(); skip=0
    for a in "${RUN[@]}"; do  # RUN without its --transformer-impl local
      if [ "$skip" = 1 ]; then skip=0; continue; fi
      if [ "$a" = --transformer-impl ]; then skip=1; continue; fi
      HRUN+=("$a")
    done
    HRUN+=(--transformer-impl transformer_engine)
  else
    HYBRID=(--hybrid-layer-pattern '*-*-' --spec pose_megatron.hybrid_local_spec hybrid_stack_spec)
    HRUN=("${RUN[@]}")
  fi
  KPOSE=(--pose-target-len 512 --rope-scaling-type linear)
  SAVE=$WORK/hybrid
  rm -rf "$SAVE" "$WORK/hf_hybrid"
  t=$(date +%s)
  env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$WORK/mlm/pretrain_hybrid.py" "${MODEL[@]}" \
    "${HRUN[@]}" "${KPOSE[@]}" "${HYBRID[@]}" --load "$SRC" --finetune --no-load-optim --no-load-rng \
    --data-path "$DATA" --split 100,0,0 --train-iters "$ITERS_PER_TYPE" --lr 1e-3 \
    --lr-decay-style constant --eval-iters 0 --eval-interval 100000 --log-interval 1 \
    --save "$SAVE" --save-interval "$ITERS_PER_TYPE" --ckpt-format torch_dist \
    > "$WORK/hybrid.log" 2>&1 ||
    { tail -30 "$WORK/hybrid.log"; echo "error: pretrain_hybrid.py failed" >&2; exit 1; }
  grep -E "\] iteration +[0-9]+/" "$WORK/hybrid.log" | sed -E 's/^.*\] (iteration +[0-9]+\/ +[0-9]+).*(lm loss: [^|]*).*$/\1 | \2/'
  "$PY" "$ROOT/tools/convert_megatron_to_hf.py" --megatron-dir "$SAVE" --out "$WORK/hf_hybrid" \
    --tokenizer "$TOK" --no-progress > "$WORK/hf_hybrid.log" 2>&1 ||
    { cat "$WORK/hf_hybrid.log"; echo "error: export of the hybrid checkpoint failed" >&2; exit 1; }
  env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$ROOT/tools/megatron_lm/mlm_logits.py" --pose \
    --script pretrain_hybrid --out "$WORK/mlm_hybrid.pt" --lengths 64 512 -- "${MODEL[@]}" \
    "${HRUN[@]}" "${KPOSE[@]}" "${HYBRID[@]}" --load "$SAVE" --ckpt-format torch_dist --no-load-optim \
    --no-load-rng > "$WORK/mlm_hybrid.log" 2>&1 ||
    { tail -30 "$WORK/mlm_hybrid.log"; echo "error: Megatron-LM could not load $SAVE" >&2; exit 1; }
  "$PY" "$ROOT/tools/megatron_lm/compare_logits.py" --hf "$WORK/hf_hybrid" \
    --megatron "$WORK/mlm_hybrid.pt" --tol 1e-4 --label "pretrain_hybrid.py ($HSPEC spec): "
  echo "hybrid step: $(( $(date +%s) - t )) s"
fi

QWEN3_SUMMARY=-
if [ "${TYPES_ONLY:-0}" != 1 ] && [ "${HYBRID_ONLY:-0}" != 1 ]; then
echo "== 9. Qwen3 (--qk-layernorm, --kv-channels 24, tied): PoSE-YaRN through pretrain_gpt.py, export, Megatron-LM's load vs HF"
# Megatron-LM's names for what makes Qwen3: QK norm (--qk-layernorm: RMSNorm per head on q and k
# before RoPE, with --normalization RMSNorm) and a head dim apart from hidden/heads
# (--kv-channels); no biases, tied embeddings as in its small sizes, rope base 1e6, Qwen3's norm
# epsilon 1e-6 (stored by Megatron-LM as layernorm_epsilon, which the export reads).
QWEN3=(--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 --num-attention-heads 4
       --kv-channels 24 --qk-layernorm --group-query-attention --num-query-groups 2
       --seq-length 64 --max-position-embeddings 64 --position-embedding-type rope
       --rotary-base 1000000 --normalization RMSNorm --norm-epsilon 1e-6 --swiglu
       --disable-bias-linear --attention-dropout 0 --hidden-dropout 0)
mapfile -t YARN_FLAGS < <(cd "$ROOT" && "$PY" -m tests.rope_type_flags yarn)
QPOSE=(--pose-target-len 512 --rope-scaling-type yarn "${YARN_FLAGS[@]}")
SAVE=$WORK/qwen3
rm -rf "$SAVE" "$WORK/hf_qwen3"
t=$(date +%s)
env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$WORK/mlm/pretrain_gpt.py" "${QWEN3[@]}" "${RUN[@]}" \
  "${QPOSE[@]}" --data-path "$DATA" --split 100,0,0 --train-iters "$ITERS" --lr 1e-3 \
  --lr-decay-style constant --eval-iters 0 --eval-interval 100000 --log-interval 1 --save "$SAVE" \
  --save-interval "$ITERS" --ckpt-format torch_dist > "$WORK/qwen3.log" 2>&1 ||
  { tail -30 "$WORK/qwen3.log"; echo "error: pretrain_gpt.py (Qwen3) failed" >&2; exit 1; }
grep -E "\] iteration +[0-9]+/" "$WORK/qwen3.log" | sed -E 's/^.*\] (iteration +[0-9]+\/ +[0-9]+).*(lm loss: [^|]*).*$/\1 | \2/'
"$PY" "$ROOT/tools/convert_megatron_to_hf.py" --megatron-dir "$SAVE" --out "$WORK/hf_qwen3" \
  --tokenizer "$TOK" --no-progress
QWEN3_HF=$("$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); r=c['rope_parameters']; print(c['architectures'][0], 'head_dim', c['head_dim'], 'tied', c['tie_word_embeddings'], 'rope', r['rope_type'], 'factor', r.get('factor'))" \
  "$WORK/hf_qwen3/config.json")
echo "config.json: $QWEN3_HF"
case "$QWEN3_HF" in Qwen3ForCausalLM*) ;; *) echo "error: exported as $QWEN3_HF, not Qwen3ForCausalLM" >&2; exit 1 ;; esac
env "${DIST_ENV[@]}" MASTER_PORT=$(free_port) "$PY" "$ROOT/tools/megatron_lm/mlm_logits.py" --pose \
  --out "$WORK/mlm_qwen3.pt" --lengths 64 512 -- "${QWEN3[@]}" "${RUN[@]}" "${QPOSE[@]}" \
  --load "$SAVE" --ckpt-format torch_dist --no-load-optim --no-load-rng > "$WORK/mlm_qwen3.log" 2>&1 ||
  { tail -30 "$WORK/mlm_qwen3.log"; echo "error: Megatron-LM could not load $SAVE" >&2; exit 1; }
"$PY" "$ROOT/tools/megatron_lm/compare_logits.py" --hf "$WORK/hf_qwen3" \
  --megatron "$WORK/mlm_qwen3.pt" --tol 1e-4 --label "Qwen3: "
QWEN3_SUMMARY="$(( $(date +%s) - t )) s"
fi

echo "== $TAG: all checks passed on $DEVICE in $(( $(date +%s) - T0 )) s (training: torch_dist ${SECONDS_OF[train_torch_dist]} s, torch ${SECONDS_OF[train_torch]} s, $ITERS iterations each; Qwen3 step $QWEN3_SUMMARY)"
