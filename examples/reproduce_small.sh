#!/usr/bin/env bash
# A small, CPU-sized reproduction of the PoSE paper's claims; its measured table and what it
# shows are in docs/results.md. The full run takes about an hour on 2 cores; the SMOKE=1 version
# (plumbing only, numbers meaningless) about 3 minutes.
#
#   bash examples/reproduce_small.sh              # full run, into runs/reproduce_small/
#   SMOKE=1 bash examples/reproduce_small.sh      # minutes-long smoke version (CI)
#
# 1. corpus: the top-level modules of the Python standard library (real text every machine has),
#    split by file into train / validation JSONL, plus synthetic passkey documents (see below);
# 2. a sentencepiece tokenizer (BPE) trained on the train split; Megatron .bin/.idx datasets;
# 3. a small LLaMA trained from scratch at a 128-token window;
# 4. extended to TARGET tokens (8x by default) by: no fine-tuning, PI only (linear scaling, no training),
#    PI fine-tuned at 128 with plain positions, full-length fine-tuning with PI, PoSE-Linear,
#    PoSE-YaRN and RandPos, each fine-tuning with the same steps and batch;
# 5. sliding-window perplexity at several lengths and passkey accuracy for each, plus training
#    time and peak memory (max RSS), merged into one table (results/table.md) and plots.
#
# Evaluating Megatron checkpoints directly needs pose_megatron.load_megatron_model (tools/eval_*.py
# detect a checkpoint by its pose_model.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/reproduce_small}
SMOKE=${SMOKE:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

TRAIN_LEN=128
# Measured on the shared 2-core machine (hidden 256, 4 layers, batch 8): a 128-token step takes
# ~0.5 s, a full-length step ~5-15 s at 1024 tokens and ~25-50 s at 2048. 8x (1024) keeps the
# full-length baseline (the run's dominant cost, ~10-25 min for 100 steps) inside the 2-hour budget.
TARGET=${TARGET:-1024}
FACTOR=$((TARGET / TRAIN_LEN))
if [ "$SMOKE" = 1 ]; then
  BASE_ITERS=20; FT_ITERS=5; WARMUP=5; VOCAB=512; LAYERS=2; HIDDEN=64; HEADS=4
  PPL_LENGTHS="128 512"; PK_LENGTHS="256 512"; PK_TRIALS=4; NUM_DOCS=2; STRIDE=64
  EVAL_DOC=512; PASSKEY_DOCS=${PASSKEY_DOCS:-20}
else
  BASE_ITERS=${BASE_ITERS:-3000}; FT_ITERS=${FT_ITERS:-100}; WARMUP=50; VOCAB=1024; LAYERS=4; HIDDEN=256
  HEADS=4
  PPL_LENGTHS="128 256 512 1024 2048"; PK_LENGTHS="128 256 512 1024 2048"; PK_TRIALS=${PK_TRIALS:-50}
  NUM_DOCS=20; STRIDE=64; EVAL_DOC=2048  # lengths up to 2x the target show where each fails
  PASSKEY_DOCS=${PASSKEY_DOCS:-1800}
fi
mkdir -p "$OUT"/{data,ckpt,logs,results}

echo "== 1. corpus: Python standard library sources"
[ -f "$OUT/data/valid.jsonl" ] || $PY - "$OUT/data" <<'EOF'
import glob, hashlib, json, os, sys, sysconfig
out = sys.argv[1]
files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
PIECE = 1200  # characters, ~600 tokens of this tokenizer: about the 5 x 128 a PoSE sample reads


def pieces(text):
    # Training documents are pieces of files cut at blank lines: the dataset makes one sample
    # per document (as the paper does), so whole files would leave ~150 samples of their first
    # few hundred tokens and most of the corpus unseen.
    cur = []
    size = 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        size += len(line)
        if size >= PIECE and not line.strip():
            yield "".join(cur)
            cur, size = [], 0
    if cur:
        yield "".join(cur)


n_train = n_valid = 0
with open(f"{out}/train.jsonl", "w") as tr, open(f"{out}/valid.jsonl", "w") as va:
    for path in files:
        text = open(path, encoding="utf-8", errors="replace").read()
        name = os.path.basename(path)
        # a fixed split by file name: one file in ten is held out, whole (long evaluation documents)
        if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10 == 0:
            va.write(json.dumps({"text": text, "file": name}) + "\n")
            n_valid += 1
            continue
        for i, piece in enumerate(pieces(text)):
            tr.write(json.dumps({"text": piece, "file": f"{name}:{i}"}) + "\n")
            n_train += 1
print(len(files), "files:", n_train, "training pieces,", n_valid, "held-out files")
EOF
# Synthetic passkey documents mixed into the training split (PASSKEY_DOCS of them, ~40% of the
# documents; one document is one sample, so also of the samples; every method sees the same
# data). A model this small trained on code alone scores 0% at every length, which says nothing
# about position extension. Each document is the evaluation's task line followed by episodes
# "needle, fillers, question, answer" with fresh keys: 60% of episodes fit a 128-token window
# (meant to teach the base model retrieval there), 40% put up to 30 fillers (~700 tokens)
# between needle and question, which only a method whose training positions span that distance
# can use. Measured: at this model size the base model did not learn to copy the key (it prints
# a constant key, docs/results.md); neither did it with whole prompts as documents, the first mix
# tried (a random 128-token window of a pack rarely holds a whole prompt).
[ -f "$OUT/data/passkey_docs.done" ] || $PY - "$OUT/data" "$PASSKEY_DOCS" <<'EOF'
import json, sys
import numpy as np
from pose_megatron.eval.passkey import KEY_RANGE, TASK_LINE, prompt_text
out, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(20240101)
with open(f"{out}/train.jsonl", "a") as tr:
    for i in range(n):
        episodes = [TASK_LINE]
        while sum(map(len, episodes)) < 3000:  # ~700 tokens, more than a PoSE sample reads
            fillers = int(rng.integers(0, 3)) if rng.random() < 0.6 else int(rng.integers(3, 31))
            before = int(rng.integers(0, fillers + 1))
            key = int(rng.integers(KEY_RANGE[0], KEY_RANGE[1] + 1))
            episodes.append(prompt_text(key, before, fillers - before, task_line=False)
                            + f" {key}.")
        tr.write(json.dumps({"text": "\n".join(episodes), "file": f"passkey_{i}"}) + "\n")
open(f"{out}/passkey_docs.done", "w").close()
print(n, "passkey documents")
EOF

echo "== 2. tokenizer and Megatron datasets"
[ -f "$OUT/data/tok.model" ] || $PY - "$OUT/data" "$VOCAB" <<'EOF'
import json, sys
import sentencepiece as spm
out, vocab = sys.argv[1], int(sys.argv[2])
lines = (l for r in map(json.loads, open(f"{out}/train.jsonl")) for l in r["text"].splitlines())
spm.SentencePieceTrainer.train(
    sentence_iterator=lines, model_prefix=f"{out}/tok", vocab_size=vocab, model_type="bpe",
    bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=True, split_digits=True,
    remove_extra_whitespaces=False, input_sentence_size=200000, shuffle_input_sentence=True)
EOF
TOK="$OUT/data/tok.model"
for split in train valid; do
  [ -f "$OUT/data/${split}_text_document.idx" ] || $PY tools/preprocess_data.py --input "$OUT/data/$split.jsonl" --output-prefix "$OUT/data/$split" \
    --tokenizer "$TOK" --prepend-bos --append-eod
done
TRAIN_DATA="$OUT/data/train_text_document"
VALID_DATA="$OUT/data/valid_text_document"

# train NAME [flags...]: one training run, its wall time and max RSS recorded in logs/NAME.time
train() {
  local name=$1; shift
  if [ -f "$OUT/ckpt/$name/pose_model.json" ]; then echo "-- $name: done already"; return; fi
  echo "-- train $name"
  /usr/bin/time -f '{"seconds": %e, "max_rss_kb": %M}' -o "$OUT/logs/$name.time" \
    $PY -m pose_megatron.train --device cpu --data-path "$TRAIN_DATA" --tokenizer-model "$TOK" \
      --save "$OUT/ckpt/$name" --no-save-optim --log-json "$OUT/logs/$name.jsonl" --progress "$@"
}

echo "== 3. base model at a $TRAIN_LEN-token window"
train base --num-layers $LAYERS --hidden-size $HIDDEN --num-attention-heads $HEADS \
  --vocab-size $VOCAB --seq-length $TRAIN_LEN --micro-batch-size 8 --global-batch-size 8 \
  --train-iters $BASE_ITERS --lr 1e-3 --min-lr 1e-4 --lr-warmup-iters $WARMUP \
  --lr-decay-style cosine --weight-decay 0.1 --pose-short-docs pack

# A training checkpoint resumes (iteration, schedule); the extensions start from the base weights
# at iteration 0, which a release checkpoint gives: round-trip the base through the converters.
if [ ! -f "$OUT/ckpt/base_release/pose_model.json" ]; then
  $PY tools/convert_megatron_to_hf.py --megatron-dir "$OUT/ckpt/base" --out "$OUT/ckpt/base_hf" \
    --force --no-progress
  $PY tools/convert_hf_to_megatron.py --hf-dir "$OUT/ckpt/base_hf" --out "$OUT/ckpt/base_release" \
    --force --no-progress
fi

echo "== 4. extensions to $TARGET tokens (x$FACTOR)"
FT="--load $OUT/ckpt/base_release --train-iters $FT_ITERS --lr 2e-4 --lr-warmup-iters 2 --micro-batch-size 8 --global-batch-size 8"
LIN="--rope-scaling-type linear --rope-scaling-factor $FACTOR"
train pi_ft      $FT $LIN --pose-train-len $TRAIN_LEN --pose-target-len $TRAIN_LEN --pose-scheme full
train full_pi    $FT $LIN --pose-train-len $TARGET --pose-target-len $TARGET --pose-scheme full \
  --micro-batch-size 1 --global-batch-size 8 --pose-short-docs pack
train pose_lin   $FT $LIN --pose-train-len $TRAIN_LEN --pose-target-len $TARGET
train pose_yarn  $FT --rope-scaling-type yarn --rope-scaling-factor $FACTOR \
  --pose-train-len $TRAIN_LEN --pose-target-len $TARGET
train randpos    $FT $LIN --pose-train-len $TRAIN_LEN --pose-target-len $TARGET --pose-scheme randpos

echo "== 5. evaluation"
# name checkpoint rope-override
METHODS=(
  "none      base      none"
  "pi_only   base      {\"rope_type\":\"linear\",\"factor\":$FACTOR}"
  "pi_ft     pi_ft     none"
  "full_pi   full_pi   none"
  "pose_lin  pose_lin  none"
  "pose_yarn pose_yarn none"
  "randpos   randpos   none"
)
for m in "${METHODS[@]}"; do
  read -r name ckpt rope <<<"$m"
  [ -f "$OUT/results/ppl_$name.json" ] || $PY tools/eval_ppl.py --model "$OUT/ckpt/$ckpt" \
    --tokenizer "$TOK" --name "$name" --rope-scaling "$rope" --data "$VALID_DATA" \
    --lengths $PPL_LENGTHS --stride $STRIDE --min-doc-tokens $EVAL_DOC --max-doc-tokens $EVAL_DOC \
    --num-docs $NUM_DOCS --device cpu --output-json "$OUT/results/ppl_$name.json"
  [ -f "$OUT/results/passkey_$name.json" ] || $PY tools/eval_passkey.py --model "$OUT/ckpt/$ckpt" \
    --tokenizer "$TOK" --name "$name" --rope-scaling "$rope" --lengths $PK_LENGTHS \
    --trials $PK_TRIALS --device cpu --output-json "$OUT/results/passkey_$name.json"
done
NAMES=$(for m in "${METHODS[@]}"; do read -r name _ <<<"$m"; echo "$name"; done)
$PY tools/eval_ppl.py --compare $(for n in $NAMES; do echo "$OUT/results/ppl_$n.json"; done) \
  --mark train=$TRAIN_LEN target=$TARGET --output-json "$OUT/results/ppl_all.json"
$PY tools/eval_passkey.py --compare $(for n in $NAMES; do echo "$OUT/results/passkey_$n.json"; done) \
  --mark train=$TRAIN_LEN target=$TARGET --output-json "$OUT/results/passkey_all.json"

# One markdown table: ppl per length, passkey accuracy per length, training time and memory.
$PY - "$OUT" <<'EOF' | tee "$OUT/results/table.md"
import json, os, sys
out = sys.argv[1]
ppl = {m["name"]: m for m in json.load(open(f"{out}/results/ppl_all.json"))["models"]}
pk = {m["name"]: m for m in json.load(open(f"{out}/results/passkey_all.json"))["models"]}
ckpt = {"none": "base", "pi_only": "base"}
pl = sorted({r["length"] for m in ppl.values() for r in m["results"]})
kl = sorted({r["length"] for m in pk.values() for r in m["results"]})
head = (["method"] + [f"ppl@{L}" for L in pl] + [f"passkey@{L}" for L in kl]
        + ["train s", "train max RSS MiB"])
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for name in ppl:
    p = {r["length"]: r["ppl"] for r in ppl[name]["results"]}
    k = {r["length"]: r["accuracy"] for r in pk.get(name, {"results": []})["results"]}
    t = f"{out}/logs/{ckpt.get(name, name)}.time"
    cost = json.load(open(t)) if os.path.exists(t) and name not in ckpt else {}
    row = ([name] + [f"{p[L]:.2f}" if L in p else "-" for L in pl]
           + [f"{100 * k[L]:.0f}%" if L in k else "-" for L in kl]
           + ([f"{cost['seconds']:.0f}", f"{cost['max_rss_kb'] / 1024:.0f}"] if cost
              else ["- (no training)", "-"]))
    print("| " + " | ".join(row) + " |")
EOF
echo "== done: $OUT/results/table.md, ppl_all.png, passkey_all.png"
