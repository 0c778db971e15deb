#!/usr/bin/env bash
# One device call for TCNLM: the CUDA tests, the speed benchmark (bench/tcnlm.py), then the
# 20 Newsgroups runs of recipes/20news/run.py (5 recipes trained concurrently for the remaining
# budget: the earlier fixed-budget protocol; run_gpu.sh trains them to convergence).
# Needs in the checkout (git-ignored, carried):
#   .cache/20news/{train,test}.jsonl.gz   gzip copies of ../shared/data/text/20news/*.jsonl
#   .cache/tcnlm_whl/                     jiwer + rapidfuzz wheels (cp312; speechlab.tasks imports jiwer)
# Usage: OUT=/tmp/out BUDGET=330 bash recipes/20news/run_gpu_budget.sh   (BUDGET: seconds for everything)
set -uo pipefail
OUT=${OUT:-/tmp/tcnlm_out}
BUDGET=${BUDGET:-330}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTORCH_NVML_BASED_CUDA_CHECK=1
if ls .cache/tcnlm_whl/*.whl >/dev/null 2>&1 && ! python3 -c "import jiwer" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .cache/tcnlm_whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,utilization.gpu --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"

echo "== CUDA tests of the TC-LSTM (compiled steps, CUDA graph) ($(( $(date +%s) - START ))s)"
timeout 90 python3 -m pytest -q -p no:cacheprovider -m cuda tests/nn/test_tcnlm_model.py 2>&1 | tail -3

echo "== speed benchmark ($(( $(date +%s) - START ))s)"
timeout 150 python3 bench/tcnlm.py --hidden 600 900 --isolate --json "$OUT/bench.json" 2>"$OUT/bench_rows.log" | tee "$OUT/bench.md"
tail -3 "$OUT/bench_rows.log"

LEFT=$(( BUDGET - ($(date +%s) - START) ))
echo "== 20 Newsgroups training, ${LEFT}s left"
python3 recipes/20news/run.py --train .cache/20news/train.jsonl.gz --test .cache/20news/test.jsonl.gz \
  --out /tmp/train --steps "${STEPS:-6000}" --seconds "$(( LEFT > 120 ? LEFT : 120 ))" --reserve 50 2>&1 \
  | grep -v -E "Warning|warn\(|^\s*$" | tee "$OUT/train.log"
cp /tmp/train/summary.json "$OUT/train_summary.json" 2>/dev/null
cp /tmp/train/table.md "$OUT/train_table.md" 2>/dev/null
echo "== done in $(( $(date +%s) - START ))s"
