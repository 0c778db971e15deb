#!/usr/bin/env bash
# Seq2seq decoding benchmark on the GPU machine (needs only torch; no lhotse/soundfile/jiwer/
# jsonargparse, speechlab not installed: the script imports its modules from this checkout).
#   bash bench/run_gpu_seq2seq.sh          # results under ${OUT:-bench_out}/
# Targets at batch 64: beam 8 <= 3x greedy; cold fusion <= 1.3x no fusion at equal beam.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print(torch.__version__, torch.cuda.get_device_name(0))
PY
for batch in 64 8; do
  python bench/seq2seq_decode.py --device cuda --batch "$batch" --frames 100 --out-len 60 \
    --repeats 5 --json "$OUT/seq2seq_decode_gpu_b$batch.json" | tee "$OUT/seq2seq_decode_gpu_b$batch.md"
done
# longer utterances (250 frames = 10 s audio at stride 4, 150 characters)
python bench/seq2seq_decode.py --device cuda --batch 64 --frames 250 --out-len 150 --repeats 3 \
  --json "$OUT/seq2seq_decode_gpu_long.json" | tee "$OUT/seq2seq_decode_gpu_long.md"
