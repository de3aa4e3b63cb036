#!/usr/bin/env bash
# PoSE context extension of LLaMA-7B on Megatron-Core: the paper's recipe (arXiv 2309.10400 §4.1),
# 2k training window, 16k (or 128k) target, on nodes of 8 GPUs. Three ways to launch it, with
# the same flags and defaults (the variables below; training flags after the script are added):
#
#   # 1. torchrun, on every node (its own flags decide nodes and processes; each worker trains):
#   LOAD=/ckpt/llama7b-megatron SAVE=/ckpt/llama7b-pose16k \
#   DATA_PATH="1.0 /data/pile_text_document" TOKENIZER=/models/llama-7b-hf/tokenizer.model \
#   torchrun --nnodes 2 --node-rank 0 --master-addr node0 --master-port 6000 \
#       --nproc-per-node 8 examples/pose_llama7b.sh
#
#   # 2. bash: starts torchrun itself from NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT,
#   #    GPUS_PER_NODE (defaults: one node, 8 GPUs); the same variables as above:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 LOAD=... SAVE=... DATA_PATH=... bash examples/pose_llama7b.sh
#
#   # 3. Slurm: one torchrun per node through srun, rendezvous from Slurm's variables:
#   LOAD=... SAVE=... DATA_PATH=... sbatch --nodes 2 --gpus-per-node 8 examples/pose_llama7b.sbatch
#
#   # Any of them in a minute on a CPU: tiny model, random tokens, 2 processes (CI runs all three:
#   # tests/test_launch_example.py, tools/slurm_check.sh):
#   POSE_TINY_CPU=1 bash examples/pose_llama7b.sh
#   POSE_TINY_CPU=1 torchrun --nproc-per-node 2 examples/pose_llama7b.sh
#   POSE_TINY_CPU=1 sbatch --nodes 1 examples/pose_llama7b.sbatch
#
# LOAD is a Megatron checkpoint of the base model, converted from a local HF directory, e.g.
#   hf download huggyllama/llama-7b --local-dir /models/llama-7b-hf   # hf: huggingface_hub's CLI
#   python tools/convert_hf_to_megatron.py --hf-dir /models/llama-7b-hf --out /ckpt/llama7b-megatron
# (its "release" checkpoint loads as weights only; training starts at iteration 0).
#
# This file is bash and Python at once, because torchrun runs the file it is given with Python:
# the Python part (the last lines) hands its worker process to the bash part, which then trains
# in that same process (exec keeps torchrun's pid, signals and exit status). A worker, i.e. any
# process with RANK and WORLD_SIZE set by a launcher, never starts another launcher.
""":"
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
WORKER=$([ -n "${RANK:-}" ] && [ -n "${WORLD_SIZE:-}" ] && echo 1 || echo 0)

# ---- Cluster (bash launch only; a worker's world is its launcher's). One torchrun per node:
# under srun (a Slurm job step) the node count, this node's rank and the first node come from
# Slurm, the port from the job id (two jobs sharing a node do not collide).
if [ -n "${SLURM_STEP_NUM_NODES:-}" ] && [ "$WORKER" = 0 ]; then
    if [ "${SLURM_STEP_NUM_TASKS:-1}" != "$SLURM_STEP_NUM_NODES" ]; then
        echo "error: srun started ${SLURM_STEP_NUM_TASKS} tasks on $SLURM_STEP_NUM_NODES nodes;" \
             "run one per node (srun --ntasks-per-node=1), its torchrun starts the node's workers" >&2
        exit 2
    fi
    NNODES=${NNODES:-$SLURM_STEP_NUM_NODES}
    NODE_RANK=${NODE_RANK:-$SLURM_NODEID}
    MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_STEP_NODELIST" | head -n 1)}
    MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
    GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}

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

if [ "${POSE_TINY_CPU:-0}" = 1 ]; then
    # ---- Tiny CPU mode: same entry and flags, a 4-layer hidden-64 model, random tokens, gloo
    # processes (TP=2 of them by default, over NNODES nodes), a few steps. The checkpoint goes
    # to SAVE, by default a fresh temporary directory for a bash launch on one node; every
    # process of a multi-process launch must name the same one, so there the default is a
    # fixed path per job under /tmp (a rerun of the same job replaces it).
    TRAIN_LEN=${TINY_TRAIN_LEN:-64}; TARGET_LEN=${TINY_TARGET_LEN:-512}
    ROPE_FACTOR=$((TARGET_LEN / TRAIN_LEN))
    TP=${TINY_TP:-2}; PP=${TINY_PP:-1}; CP=1
    GLOBAL_BATCH=4; TRAIN_ITERS=${TINY_ITERS:-3}; WARMUP=1
    PRECISION=(--device cpu)
    MODEL=(--num-layers 4 --hidden-size 64 --num-attention-heads 4 --num-query-groups 2
           --vocab-size 256 --max-position-embeddings "$TRAIN_LEN")
    DATA=(--mock-data)
    GPUS_PER_NODE=${GPUS_PER_NODE:-$((TP * PP * CP / NNODES))}
    MASTER_PORT=${MASTER_PORT:-${MASTER_PORT_TINY:-$((20000 + RANDOM % 20000))}}
    if [ "$WORKER" = 1 ] || [ "$NNODES" != 1 ]; then
        SAVE=${SAVE:-/tmp/pose-tiny-$(id -u)-${SLURM_JOB_ID:-${TORCHELASTIC_RUN_ID:-run}-$MASTER_PORT}}
    fi
    SAVE=${SAVE:-$(mktemp -d)/pose-tiny}
    CKPT=(--save "$SAVE" --save-interval 2)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    for var in LOAD SAVE DATA_PATH; do
        if [ -z "${!var:-}" ]; then
            # under torchrun every worker stops here; rank 0 says why
            [ "${RANK:-0}" = 0 ] && echo "error: set $var (see the top of $0)" >&2
            exit 2
        fi
    done
fi
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-6000}

TRAIN=(--tensor-model-parallel-size "$TP"
    --pipeline-model-parallel-size "$PP"
    --context-parallel-size "$CP"
    "${MODEL[@]}"
    --pose-train-len "$TRAIN_LEN" --pose-target-len "$TARGET_LEN"
    --pose-num-chunks 2 --pose-scheme reference --pose-content-offset random
    --rope-scaling-type "$ROPE" --rope-scaling-factor "$ROPE_FACTOR"
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH"
    --train-iters "$TRAIN_ITERS" --lr 2e-5 --min-lr 0 --lr-warmup-iters "$WARMUP"
    --lr-decay-style linear --weight-decay 0 --adam-beta1 0.9 --adam-beta2 0.95 --clip-grad 1.0
    "${PRECISION[@]}" "${DATA[@]}" "${CKPT[@]}"
    --log-interval 1 ${TENSORBOARD_DIR:+--tensorboard-dir "$TENSORBOARD_DIR"})

if [ "$WORKER" = 1 ]; then
    [ "$RANK" = 0 ] && echo "+ rank 0 of $WORLD_SIZE: $PYTHON -m pose_megatron.train ${TRAIN[*]} $*" >&2
    exec "$PYTHON" -m pose_megatron.train "${TRAIN[@]}" "$@"
fi
set -x
# pose_megatron.launch is torchrun (same flags) whose failed job ends in one error line.
exec "$PYTHON" -m pose_megatron.launch --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --nproc-per-node "$GPUS_PER_NODE" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    -m pose_megatron.train "${TRAIN[@]}" "$@"
# (bash stops above; what follows is the Python part, a here-document bash only skips over)
: <<'# end of the Python part'
"""
# Python: torchrun's worker. Become the bash part above (same process), with torchrun's Python.
import os
import sys

os.environ.setdefault("PYTHON", sys.executable)
os.execvp("bash", ["bash", os.path.abspath(__file__), *sys.argv[1:]])
# end of the Python part
