#!/usr/bin/env bash
# Runs on the 10k-utterance synthetic corpus on the GPU machine, in one device call: the corpus
# is synthesized there (`speechlab data synth --utterances 10000 --seed 1 --dev-fraction 0.03
# --test-fraction 0.03`, kept while the machine stays warm), then the chosen RUNS train at the
# same time on one H200 for the same wall-clock budget each (bf16-mixed), and each best
# dev-CER checkpoint is tested (greedy, and beam 4 for seq2seq).
#
# Attention seq2seq convergence (issue 14): CTC, seq2seq (attention only), seq2seq + joint CTC
# (ctc_weight), Cold Fusion + joint CTC; and seq2seq / Cold Fusion whose encoder and CTC head
# start from a trained CTC checkpoint (s2s_init, cold_init: CTC_INIT=path, default the ctc run's
# best.ckpt of an earlier call on the same warm machine):
#   OUT=/tmp/out RUNS="ctc s2s s2s_ctc cold_ctc" bash recipes/synth/run_gpu.sh
#   OUT=/tmp/out RUNS="s2s_init cold_init" bash recipes/synth/run_gpu.sh
# s2s_ctc_graphs, cold_ctc_graphs: s2s_ctc / cold_ctc with the decoder's teacher forcing as CUDA
# graphs (decoder.cuda_graphs); from scratch in the full budget (issue 14):
#   OUT=/tmp/out S2S_STEPS=4000 RUNS="s2s_ctc_graphs cold_ctc_graphs" bash recipes/synth/run_gpu.sh
# Conformer vs BiLSTM CTC (issue 19): the BiLSTM of recipes/tiny/ctc.yaml (0.76M parameters), the
# same BiLSTM at hidden 216 (2.03M) and the Conformer of recipes/tiny/ctc_conformer.yaml (2.04M):
#   OUT=/tmp/out RUNS="ctc ctc_bilstm_2m ctc_conformer" bash recipes/synth/run_gpu.sh
#
#   BUDGET=00:00:04:30 CTC_WEIGHT=0.3 ... (defaults)
#
# Carried (git-ignored): .whl2/ (cp312 wheels: lhotse, soundfile, jiwer, jsonargparse, ...) and
# .gpu/espeak.tar.gz (espeak-ng + its libraries + English data, with a wrapper espeak/bin/espeak-ng
# that sets LD_LIBRARY_PATH and ESPEAK_DATA_PATH). Each run trains in its own folder
# /tmp/runs/<run> (the recipes' exp/ paths are relative), from recipes/tiny/*.yaml with the data
# paths swapped (the recipes' ctc_weight 0.3 is set explicitly per run: s2s is attention only).
# Results: $OUT/results.json, $OUT/logs.tgz (fit/test logs: dev CER per epoch).
set -uo pipefail
START=$(date +%s)
el() { echo "[$(($(date +%s) - START)) s] $*"; }
OUT=${OUT:-/tmp/s2s_out}
BUDGET=${BUDGET:-00:00:04:30}
CTC_WEIGHT=${CTC_WEIGHT:-0.3}
RUNS=${RUNS:-"ctc s2s s2s_ctc cold_ctc"}
UTTS=${UTTS:-10000}
S2S_STEPS=${S2S_STEPS:-1200}  # the seq2seq runs' max_steps (and LR schedule); raise it for the CUDA-graphed decoder
REPO=$PWD
DATA=$REPO/data/synth10k
mkdir -p "$OUT"
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh espeak || exit 1
CTC_INIT=${CTC_INIT:-/tmp/runs/ctc/exp/tiny_ctc/checkpoints/best.ckpt}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ ! -f "$DATA/test.jsonl" ]; then
  python3 -m speechlab.cli data synth --out "$DATA" --utterances "$UTTS" --seed 1 --jobs "$(nproc)" \
    --dev-fraction 0.03 --test-fraction 0.03 >"$OUT/synth.log" 2>&1 || { tail -3 "$OUT/synth.log"; exit 1; }
fi
el "corpus: $(wc -l <"$DATA/train.jsonl") train, $(wc -l <"$DATA/dev.jsonl") dev, $(wc -l <"$DATA/test.jsonl") test"

speech=(--data.init_args.train_manifest "$DATA/train.jsonl" --data.init_args.dev_manifest "$DATA/dev.jsonl"
        --data.init_args.test_manifest "$DATA/test.jsonl" --data.init_args.num_workers 3)
gpu=(--trainer.accelerator gpu --trainer.precision bf16-mixed --trainer.max_time "$BUDGET"
     --trainer.check_val_every_n_epoch 1)
fit() {  # fit RUN RECIPE [args...]: train in /tmp/runs/RUN, log to $OUT/fit_RUN.log
  local run=$1 recipe=$2; shift 2
  mkdir -p "/tmp/runs/$run" && cd "/tmp/runs/$run" &&
    python3 -m speechlab.cli fit --config "$REPO/recipes/tiny/$recipe.yaml" "$@" >"$OUT/fit_$run.log" 2>&1
  echo "fit rc=$?" >>"$OUT/fit_$run.log"
}
PIDS=()
for run in $RUNS; do
  case $run in
    ctc) fit ctc ctc "${speech[@]}" "${gpu[@]}" --trainer.max_steps 6000 & PIDS+=($!) ;;
    ctc_bilstm_2m) fit ctc_bilstm_2m ctc "${speech[@]}" "${gpu[@]}" --trainer.max_steps 6000 \
                     --model.init_args.encoder.hidden_size 216 & PIDS+=($!) ;;
    ctc_conformer) fit ctc_conformer ctc_conformer "${speech[@]}" "${gpu[@]}" --trainer.max_steps 6000 & PIDS+=($!) ;;
    s2s_ctc_graphs) fit s2s_ctc_graphs seq2seq "${speech[@]}" "${gpu[@]}" --trainer.max_steps "$S2S_STEPS" \
                      --model.init_args.ctc_weight "$CTC_WEIGHT" --model.init_args.decoder.cuda_graphs true & PIDS+=($!) ;;
    s2s_init) fit s2s_init seq2seq "${speech[@]}" "${gpu[@]}" --trainer.max_steps "$S2S_STEPS" \
                --model.init_args.ctc_weight "$CTC_WEIGHT" --model.init_args.init_checkpoint "$CTC_INIT" & PIDS+=($!) ;;
    s2s) fit s2s seq2seq "${speech[@]}" "${gpu[@]}" --trainer.max_steps "$S2S_STEPS" \
           --model.init_args.ctc_weight 0 & PIDS+=($!) ;;
    s2s_ctc) fit s2s_ctc seq2seq "${speech[@]}" "${gpu[@]}" --trainer.max_steps "$S2S_STEPS" \
               --model.init_args.ctc_weight "$CTC_WEIGHT" & PIDS+=($!) ;;
    cold_ctc)  # the character LM on the training transcripts first (1 minute), then cold fusion
      (fit lm rnnlm --data.init_args.train_text "$DATA/train.jsonl" --data.init_args.dev_text \
         "$DATA/dev.jsonl" --trainer.accelerator gpu --trainer.max_time 00:00:01:00 --trainer.max_steps 3000 &&
       fit cold_ctc seq2seq_cold "${speech[@]}" "${gpu[@]}" --trainer.max_steps "$S2S_STEPS" \
         --model.init_args.ctc_weight "$CTC_WEIGHT" \
         --model.init_args.lm_checkpoint /tmp/runs/lm/exp/tiny_rnnlm/checkpoints/last.ckpt) & PIDS+=($!) ;;
    cold_ctc_graphs)  # cold_ctc with the CUDA-graphed decoder
      (fit lm_graphs rnnlm --data.init_args.train_text "$DATA/train.jsonl" --data.init_args.dev_text \
         "$DATA/dev.jsonl" --trainer.accelerator gpu --trainer.max_time 00:00:01:00 --trainer.max_steps 3000 &&
       fit cold_ctc_graphs seq2seq_cold "${speech[@]}" "${gpu[@]}" --trainer.max_steps "$S2S_STEPS" \
         --model.init_args.ctc_weight "$CTC_WEIGHT" --model.init_args.decoder.cuda_graphs true \
         --model.init_args.lm_checkpoint /tmp/runs/lm_graphs/exp/tiny_rnnlm/checkpoints/last.ckpt) & PIDS+=($!) ;;
    cold_init)  # as cold_ctc, the encoder and CTC head from CTC_INIT
      (fit lm_init rnnlm --data.init_args.train_text "$DATA/train.jsonl" --data.init_args.dev_text \
         "$DATA/dev.jsonl" --trainer.accelerator gpu --trainer.max_time 00:00:01:00 --trainer.max_steps 3000 &&
       fit cold_init seq2seq_cold "${speech[@]}" "${gpu[@]}" --trainer.max_steps "$S2S_STEPS" \
         --model.init_args.ctc_weight "$CTC_WEIGHT" --model.init_args.init_checkpoint "$CTC_INIT" \
         --model.init_args.lm_checkpoint /tmp/runs/lm_init/exp/tiny_rnnlm/checkpoints/last.ckpt) & PIDS+=($!) ;;
  esac
done
for p in "${PIDS[@]}"; do wait "$p"; done
el "training done"
for run in $RUNS; do grep -E "training ended|rc=" "$OUT/fit_$run.log" | tail -2 | sed "s/^/$run: /"; done

PIDS=()
for run in $RUNS; do
  ckpt=$(ls /tmp/runs/$run/exp/*/checkpoints/best.ckpt 2>/dev/null | head -1)
  [ -n "$ckpt" ] || { echo "$run: no best.ckpt"; continue; }
  (cd "/tmp/runs/$run" && for beam in 1 4; do
     extra=(); [[ "$run" != ctc* ]] && extra=(--model.init_args.beam_size "$beam")
     case $run in ctc*) [ "$beam" = 4 ] && continue ;; esac
     python3 -m speechlab.cli test --ckpt_path "$ckpt" --trainer.accelerator gpu "${extra[@]}" \
       --model.init_args.output_dir "/tmp/runs/$run/test_beam$beam" --model.init_args.overwrite true \
       >"$OUT/test_${run}_beam$beam.log" 2>&1
   done) & PIDS+=($!)
done
for p in "${PIDS[@]}"; do wait "$p"; done
python3 - "$RUNS" "$OUT/results.json" <<'EOF'
import glob, json, re, sys
sys.path.insert(0, "scripts")
from gpu_results import fit_summary
rows = {}
for run in sys.argv[1].split():
    row = fit_summary(open(f"{sys.argv[2].rsplit('/', 1)[0]}/fit_{run}.log").read())
    for path in glob.glob(f"/tmp/runs/{run}/test_beam*/wer.json"):
        beam = re.search(r"beam(\d+)", path).group(1)
        w = json.load(open(path))
        row[f"beam{beam}"] = {"wer": w["test_word"]["rate"], "cer": w["test_char"]["rate"], "utterances": w["utterances"]}
    rows[run] = row
    print(run, json.dumps({k: v for k, v in row.items() if k != "dev_cer_curve"}))
json.dump(rows, open(sys.argv[2], "w"), indent=1)
EOF
mkdir -p "$OUT/ckpt"  # every best.ckpt comes back without its optimizer state (a few MB each)
for run in $RUNS; do
  for ckpt in /tmp/runs/$run/exp/*/checkpoints/best.ckpt; do
    [ -f "$ckpt" ] && python3 scripts/gpu_results.py strip "$ckpt" "$OUT/ckpt/$run.ckpt"
  done
done
tar czf "$OUT/logs.tgz" "$OUT"/*.log 2>/dev/null && rm -f "$OUT"/*.log
el "done"
