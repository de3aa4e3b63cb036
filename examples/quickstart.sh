#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job on a tiny bundled default.
#   bash examples/quickstart.sh            # everything, into runs/quickstart/ (CPU is enough)
# Steps (each prints what it did):
#   1. create .venv and install pose_megatron (tools/setup_env.sh; skipped when up to date)
#   2. PoSE positions for 2k -> 16k and their coverage of the target window (coverage.png)
#   3. the bundled corpus: this Python's standard-library sources, a sentencepiece tokenizer,
#      Megatron .bin/.idx
#   4. a tiny LLaMA in HF format (window 64), converted to a Megatron-Core checkpoint
#   5. PoSE training on Megatron-Core: window 64 -> target 512 (8x) with linear RoPE scaling
#   6. the trained model converted back to HF (config.json carries the RoPE scaling)
#   7. perplexity of the HF models before and after PoSE at 64 and 512 tokens (table, ppl.png)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
OUT=${OUT:-runs/quickstart}
ITERS=${ITERS:-30}
mkdir -p "$OUT"
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== 2. PoSE positions, 2048 -> 16384, and how they cover the target window"
$PY -m pose_megatron.positions --train-len 2048 --target-len 16384 --samples 100000 \
  --plot "$OUT/coverage.png"

echo "== 3. bundled corpus"
[ -f "$OUT/data/corpus_text_document.idx" ] || $PY -m pose_megatron.data.corpus --out "$OUT/data"
DATA="$OUT/data/corpus_text_document"
TOK="$OUT/data/tokenizer.model"

echo "== 4. tiny HF LLaMA -> Megatron-Core checkpoint"
$PY tools/make_tiny_llama.py --out "$OUT/hf_base" --tokenizer-model "$TOK"
$PY tools/convert_hf_to_megatron.py --hf-dir "$OUT/hf_base" --out "$OUT/mcore_base" --force \
  --no-progress

echo "== 5. PoSE training: window 64 -> target 512, linear RoPE scaling, $ITERS steps"
rm -rf "$OUT/mcore_pose"
$PY -m pose_megatron.train --device cpu --load "$OUT/mcore_base" --save "$OUT/mcore_pose" \
  --data-path 1.0 "$DATA" --tokenizer-model "$TOK" \
  --pose-train-len 64 --pose-target-len 512 --rope-scaling-type linear \
  --micro-batch-size 4 --global-batch-size 8 --train-iters "$ITERS" --lr 1e-3 \
  --lr-warmup-iters $((ITERS / 10)) --clip-grad 1.0 --log-interval 5 --save-interval "$ITERS"

echo "== 6. back to HF"
$PY tools/convert_megatron_to_hf.py --megatron-dir "$OUT/mcore_pose" --out "$OUT/hf_pose" \
  --tokenizer "$TOK" --force --no-progress
$PY -c "import json,sys; c=json.load(open(sys.argv[1])); print('rope_scaling in config.json:', c.get('rope_scaling') or c.get('rope_parameters'))" "$OUT/hf_pose/config.json"

echo "== 7. perplexity before and after PoSE, at 64 and 512 tokens (4 corpus documents)"
EVAL=(--tokenizer "$TOK" --data "$DATA" --lengths 64 512 --stride 64 --num-docs 4
      --min-doc-tokens 512)
$PY tools/eval_ppl.py --model "$OUT/hf_base" --name base "${EVAL[@]}" \
  --output-json "$OUT/ppl_base.json" --plot "$OUT/ppl_base.png"
$PY tools/eval_ppl.py --model "$OUT/hf_pose" --name pose-linear "${EVAL[@]}" \
  --output-json "$OUT/ppl_pose.json" --compare "$OUT/ppl_base.json" \
  --mark train=64 target=512 --plot "$OUT/ppl.png"
echo "== done: outputs in $OUT/ (coverage.png, hf_pose/, ppl.png, ppl_*.json)"
