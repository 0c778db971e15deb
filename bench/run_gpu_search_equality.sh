#!/usr/bin/env bash
# Issue 18.4 on the synthetic test set: bench/search_equality.py with `make demo`'s Gram-CTC model
# and word 3-gram LM (beam 16, the lexicon, alpha / beta tuned on dev by the demo) -- the batched
# search on the GPU against the batched and the C++ search on the CPU, on the same network outputs.
#   bash bench/run_gpu_search_equality.sh prepare     # here, after `make demo`: data/tiny_test/
#   # then one device call carrying .whl2 exp/tiny_gram_ctc_joint/checkpoints/best.ckpt exp/lm data/tiny_test:
#   OUT=/tmp/out bash bench/run_gpu_search_equality.sh
set -euo pipefail
EXP=exp/tiny_gram_ctc_joint
if [ "${1:-}" = prepare ]; then
  # the 180 test utterances alone (16 MB; the demo's data/tiny holds all 1,800)
  mkdir -p data/tiny_test/wavs
  python3 - <<'PY'
import json, shutil
rows = [json.loads(line) for line in open("data/tiny/test.jsonl")]
for r in rows:
    shutil.copy(f"data/tiny/{r['audio_filepath']}", f"data/tiny_test/{r['audio_filepath']}")
with open("data/tiny_test/test.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
print(f"data/tiny_test: {len(rows)} utterances")
PY
  exit 0
fi
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu_env.sh
[ -d .whl2 ] && { source scripts/gpu_env.sh || exit 1; }
# the demo's dev-tuned LM weight and word score (make demo, 2026-12-04: alpha 0.5, beta 2)
ALPHA=${ALPHA:-0.5} BETA=${BETA:-2} DEVICE=${DEVICE:-cuda}
python3 bench/search_equality.py --checkpoint "$EXP/checkpoints/best.ckpt" --manifest data/tiny_test/test.jsonl \
  --beam-size 16 --lm exp/lm/tiny_3gram.arpa --lexicon lm --lm-weight "$ALPHA" --word-score "$BETA" \
  --device "$DEVICE" --out "$OUT/search_equality" 2>&1 | grep -v -E '^\*+$|^-+5-' | tee "$OUT/search_equality.log"
