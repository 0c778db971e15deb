#!/usr/bin/env bash
# The 20 Newsgroups TCNLM study on the GPU machine: the five recipes of this folder trained at the
# same time on one H200 with `speechlab fit`, each to the end of its learning-rate schedule (its
# best dev-perplexity checkpoint is best.ckpt), resumable across device calls, then tested.
#
#   OUT=/tmp/out MAX_TIME=00:00:08:30 bash recipes/20news/run_gpu.sh        # first call
#   OUT=/tmp/out MAX_TIME=00:00:17:00 bash recipes/20news/run_gpu.sh        # next call, resumes
#   OUT=/tmp/out TEST_ONLY=1 bash recipes/20news/run_gpu.sh                 # test best.ckpt only
#   GENERATE=1 ...: also each TCNLM's topics and topic-conditioned sentences from best.ckpt
#   ($OUT/topics_<recipe>.json, $OUT/generate_<recipe>.json: 3 sentences per topic, temperature 0.8)
#
# The controlled protocol (docs/tcnlm.md; not in the default CONFIGS): the TCNLM that sees only
# the preceding sentences and the document-stream LSTM, with the same settings:
#   OUT=/tmp/out CONFIGS="tcnlm_10_preceding lstm_stream" bash recipes/20news/run_gpu.sh
#
# MAX_TIME is cumulative: Lightning's Timer state travels in last.ckpt, so a resumed run stops at
# the total it is given. A call resumes from exp/20news_*/checkpoints/last.ckpt when it is there
# (the GPU machine keeps git-ignored folders between calls only while it stays warm; the
# checkpoints are ~110 MB each, too large to bring back). Settings beyond the recipes (the same for
# every model, so the comparison stays equal): batch 128 sentences, 11,000 steps (10 epochs), lr
# 1.5e-3. Carried (git-ignored): .whl2/ (cp312 wheels: jiwer, lhotse, jsonargparse, ...),
# .cache/20news/{train,test}.jsonl.gz (gzip copies of ../shared/data/text/20news/*.jsonl).
# EXTRA: more `speechlab fit` arguments for every model (the same for all, so the comparison
# stays equal), e.g. EXTRA="--model.init_args.dropout 0.5".
# The recipes stop at 10 epochs (~9,900 steps at batch 128): a longer STEPS schedule needs
# EXTRA="--trainer.max_epochs 20" (or more), or it is cut there.
# SEEDS="0 1 2": each recipe once per seed (--seed_everything s, runs named <recipe>_seed<s> in
# exp/20news_<recipe>_seed<s>), all at once; `python recipes/20news/seeds_report.py $OUT` then
# prints each recipe's mean ± std over the seeds and the paired per-seed differences. Without
# SEEDS: one run per recipe at the recipes' seed (0), named <recipe>.
# Results: $OUT/<run>.json (speechlab test's results.json: perplexity, topics, NPMI), logs.
set -uo pipefail
START=$(date +%s)
el() { echo "[$(($(date +%s) - START)) s] $*"; }
OUT=${OUT:-/tmp/tcnlm_gpu}
MAX_TIME=${MAX_TIME:-00:00:08:30}
CONFIGS=${CONFIGS:-"lstm_equal_size lstm_equal_params tcnlm_10 tcnlm_30 tcnlm_50"}
STEPS=${STEPS:-11000}
mkdir -p "$OUT"
export PYTORCH_NVML_BASED_CUDA_CHECK=1
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
DATA=(--data.init_args.train .cache/20news/train.jsonl.gz --data.init_args.test .cache/20news/test.jsonl.gz)
SETTINGS=(--data.init_args.batch_size 128 --model.init_args.total_steps "$STEPS"
          --model.init_args.lr 0.0015 --trainer.max_steps "$STEPS" --trainer.val_check_interval 500)
read -r -a EXTRA_ARGS <<<"${EXTRA:-}"
SETTINGS+=("${EXTRA_ARGS[@]}")
# runs as recipe:seed:name (seed "-": the recipe's own)
RUNS=()
for c in $CONFIGS; do
  if [ -z "${SEEDS:-}" ]; then RUNS+=("$c:-:$c"); else for s in $SEEDS; do RUNS+=("$c:$s:${c}_seed$s"); done; fi
done
seed_args() {  # the fit arguments of run $1 (recipe:seed:name) beyond the shared ones
  local c s name; IFS=: read -r c s name <<<"$1"
  [ "$s" = - ] || echo "--seed_everything $s --trainer.default_root_dir exp/20news_$name"
}

if [ -z "${TEST_ONLY:-}" ]; then
  PIDS=()
  for r in "${RUNS[@]}"; do
    IFS=: read -r c _ name <<<"$r"
    read -r -a SEED_ARGS <<<"$(seed_args "$r")"
    ckpt=exp/20news_$name/checkpoints/last.ckpt
    resume=(); [ -f "$ckpt" ] && resume=(--ckpt_path "$ckpt")
    el "$name: fit ${resume[*]:-from scratch} until $MAX_TIME"
    (python3 -m speechlab.cli fit --config "recipes/20news/$c.yaml" "${DATA[@]}" "${SETTINGS[@]}" \
       "${SEED_ARGS[@]}" --trainer.max_time "$MAX_TIME" "${resume[@]}" \
       >>"$OUT/fit_$name.log" 2>&1; echo "fit rc=$?" >>"$OUT/fit_$name.log") &
    PIDS+=($!)
  done
  for p in "${PIDS[@]}"; do wait "$p"; done
  for r in "${RUNS[@]}"; do name=${r##*:}; grep -E "Epoch|val/ppl|rc=" "$OUT/fit_$name.log" | tail -2; done
fi
if [ -n "${TEST_ONLY:-}" ] || [ -n "${TEST:-}" ]; then
  PIDS=()
  for r in "${RUNS[@]}"; do
    name=${r##*:}
    (python3 -m speechlab.cli test --ckpt_path "exp/20news_$name/checkpoints/best.ckpt" "${DATA[@]}" \
       --model.init_args.output_dir "exp/20news_$name" --model.init_args.overwrite true \
       >"$OUT/test_$name.log" 2>&1
     cp "exp/20news_$name/results.json" "$OUT/$name.json") &
    PIDS+=($!)
  done
  for p in "${PIDS[@]}"; do wait "$p"; done
fi
if [ -n "${GENERATE:-}" ]; then
  for r in "${RUNS[@]}"; do
    c=${r##*:}
    case $c in tcnlm*) ;; *) continue ;; esac
    best=exp/20news_$c/checkpoints/best.ckpt
    python3 -m speechlab.cli tcnlm topics --checkpoint "$best" --top-k 10 --out "$OUT/topics_$c.json" --force \
      >"$OUT/topics_$c.log" 2>&1
    python3 -m speechlab.cli tcnlm generate --checkpoint "$best" --topic all --num 3 --temperature 0.8 \
      --seed 0 --device cuda --out "$OUT/generate_$c.json" --force >"$OUT/generate_$c.log" 2>&1
    el "$c: topics and generations (rc=$?)"
  done
fi
python3 - "${RUNS[@]##*:}" <<'EOF'
import json, sys, torch
for c in sys.argv[1:]:
    d = f"exp/20news_{c}/checkpoints"
    row = {"recipe": c}
    for name in ("last", "best"):
        try:
            ck = torch.load(f"{d}/{name}.ckpt", map_location="cpu", weights_only=False)
        except FileNotFoundError:
            continue
        row[f"{name}_step"] = ck.get("global_step")
        for cb, state in ck.get("callbacks", {}).items():
            if "best_model_score" in state and state["best_model_score"] is not None:
                row["best_dev_ppl"] = round(float(state["best_model_score"]), 2)
    print(json.dumps(row))
EOF
tar czf "$OUT/logs.tgz" "$OUT"/*.log 2>/dev/null && rm -f "$OUT"/*.log
el "done"
