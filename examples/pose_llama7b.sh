#!/usr/bin/env bash
# PoSE context extension of LLaMA-7B on Megatron-Core: the paper's recipe (arXiv 2309.10400 §4.1),
# 2k training window, 16k (or 128k) target, on nodes of 8 GPUs.
#
#   # every node, same command (torchrun's multi-node rendezvous):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=6000 GPUS_PER_NODE=8 \
#   LOAD=/ckpt/llama7b-megatron SAVE=/ckpt/llama7b-pose16k \
#   DATA_PATH="1.0 /data/pile_text_document" TOKENIZER=/models/llama7b/tokenizer.model \
#   bash examples/pose_llama7b.sh
#
#   # the same flags on a CPU in a minute, 2 processes, tiny model, random tokens (CI runs this):
#   POSE_TINY_CPU=1 bash examples/pose_llama7b.sh
#
# LOAD is a Megatron checkpoint of the base model, e.g. from
#   python tools/convert_hf_to_megatron.py --hf huggyllama/llama-7b --out /ckpt/llama7b-megatron
# (its "release" checkpoint loads as weights only; training starts at iteration 0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}

# ---- Cluster: torchrun reads these; one node with all its GPUs by default. -------------------
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-6000}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}

# ---- PoSE: the paper trains 2k windows whose position ids span the target window. ------------
TRAIN_LEN=${TRAIN_LEN:-2048}        # L_c, LLaMA-1's window
TARGET_LEN=${TARGET_LEN:-16384}     # L_t: 16384 (x8) or 131072 (x64, use ROPE=yarn)
ROPE=${ROPE:-linear}                # linear (position interpolation) or yarn
ROPE_FACTOR=${ROPE_FACTOR:-$((TARGET_LEN / TRAIN_LEN))}

# ---- Parallelism for 8xH100 (80 GB): 7B in bf16 with a distributed optimizer fits with TP=2;
# the 2k PoSE window needs neither pipeline nor context parallelism (that is PoSE's point:
# full-length 16k training would want CP). DP = GPUs / (TP*PP*CP).
TP=${TP:-2}
PP=${PP:-1}
CP=${CP:-1}

# ---- Paper recipe: global batch 64, lr 2e-5, 10 warm-up steps then linear decay, 1000 steps,
# AdamW without weight decay, gradient clipping 1.0 (the paper used fp16 on V100; bf16 here).
MICRO_BATCH=${MICRO_BATCH:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
TRAIN_ITERS=${TRAIN_ITERS:-1000}
WARMUP=${WARMUP:-10}

PRECISION=(--bf16 --use-distributed-optimizer)
MODEL=()
DATA=(--data-path ${DATA_PATH:-} --split 100,0,0 ${TOKENIZER:+--tokenizer-model "$TOKENIZER"})
CKPT=(--load "${LOAD:-}" --save "${SAVE:-}" --save-interval ${SAVE_INTERVAL:-200})
LAUNCH=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE"
        --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")

if [ "${POSE_TINY_CPU:-0}" = 1 ]; then
    # ---- Tiny CPU mode: same entry and flags, a 4-layer hidden-64 model, random tokens, two
    # gloo processes (TP=2 by default), a few steps, a checkpoint in a temporary directory.
    TRAIN_LEN=${TINY_TRAIN_LEN:-64}; TARGET_LEN=${TINY_TARGET_LEN:-512}
    ROPE_FACTOR=$((TARGET_LEN / TRAIN_LEN))
    TP=${TINY_TP:-2}; PP=${TINY_PP:-1}; CP=1
    GLOBAL_BATCH=4; TRAIN_ITERS=${TINY_ITERS:-3}; WARMUP=1
    PRECISION=(--device cpu)
    MODEL=(--num-layers 4 --hidden-size 64 --num-attention-heads 4 --num-query-groups 2
           --vocab-size 256 --max-position-embeddings "$TRAIN_LEN")
    DATA=(--mock-data)
    SAVE=${SAVE:-$(mktemp -d)/pose-tiny}
    CKPT=(--save "$SAVE" --save-interval 2)
    LAUNCH=(--nnodes 1 --node-rank 0 --nproc-per-node $((TP * PP * CP))
            --master-addr 127.0.0.1 --master-port "${MASTER_PORT_TINY:-$((20000 + RANDOM % 20000))}")
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    for var in LOAD SAVE DATA_PATH; do
        if [ -z "${!var:-}" ]; then echo "error: set $var (see the top of $0)" >&2; exit 2; fi
    done
fi

set -x
# pose_megatron.launch is torchrun (same flags) whose failed job ends in one error line.
exec "$PYTHON" -m pose_megatron.launch "${LAUNCH[@]}" -m pose_megatron.train \
    --tensor-model-parallel-size "$TP" \
    --pipeline-model-parallel-size "$PP" \
    --context-parallel-size "$CP" \
    "${MODEL[@]}" \
    --pose-train-len "$TRAIN_LEN" --pose-target-len "$TARGET_LEN" \
    --pose-num-chunks 2 --pose-scheme reference --pose-content-offset random \
    --rope-scaling-type "$ROPE" --rope-scaling-factor "$ROPE_FACTOR" \
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" \
    --train-iters "$TRAIN_ITERS" --lr 2e-5 --min-lr 0 --lr-warmup-iters "$WARMUP" \
    --lr-decay-style linear --weight-decay 0 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0 \
    "${PRECISION[@]}" "${DATA[@]}" "${CKPT[@]}" \
    --log-interval 1 ${TENSORBOARD_DIR:+--tensorboard-dir "$TENSORBOARD_DIR"} \
    "$@"
