#!/usr/bin/env bash
# The real-text domain-transfer study of Cold Fusion (issue 14; docs/cold_fusion.md), on the GPU
# machine in three calls of < 10 minutes (STAGE=1, 2, 3), each resumable on a fresh machine:
#   domain A = sentences of ten public-domain books, domain B = rt_polarity movie reviews, both
#   spoken by espeak-ng (many voices); the text comes from recipes/domain/prepare_text_domains.py
#   (run here, where ../shared/data is): 10,000/300/500 A train/dev/test utterances, 1,000/300/600
#   B ones (B's train = the 10 % fine-tuning set, 10 % of A's training utterances), and each
#   domain's LM text = all its other sentences (no speech sentence of either domain in an LM).
#
#   STAGE 1: synthesize A and B (16 cores) while the two character LSTM LMs train on the GPU
#            (recipes/tiny/rnnlm.yaml, hidden $LM_HIDDEN, best dev-ppl checkpoint); then a CTC
#            model on A (recipes/tiny/ctc.yaml) whose encoder starts every seq2seq row.
#   STAGE 2: on A from the CTC encoder, the same budget each, at the same time: seq2seq without LM
#            (none; also the shallow / ILM rows' model) and Cold Fusion with the frozen A LM
#            (recipes/tiny/seq2seq{,_cold}.yaml; decoder as CUDA graphs).
#   STAGE 3: deep fusion (the none model + the A LM, gate and output DNN trained); the shallow
#            weight beta and the ILM weight lambda picked on B's dev set (A's LM for A, B's for B
#            at test); fine-tuning of none / cold / deep on B's 1,000 utterances (B LM for cold
#            and deep); test of every row on A (A LM) and on B (B LM swapped in), greedy and beam.
#
#   python recipes/domain/prepare_text_domains.py --out .cache/domain   # here, once
#   STAGE=1 OUT=/tmp/out bash recipes/domain/run_gpu.sh   # device call; carry .whl2 .gpu .cache/domain
#   (copy $OUT/ckpt/*.ckpt into .cache/domain/ckpt/ here; the next stage reads them from there)
#
# The KenLM character n-gram rows are decoded on a CPU machine (the kenlm module does not load
# beside torch on the GPU machine, recipes/fsdd/run_gpu.sh): recipes/domain/run_cpu_decode.sh (which also
# re-decodes the LSTM-LM shallow / ILM rows with a wider weight grid);
# the tables: recipes/domain/report_text_domains.py. The carried .whl2/ and .gpu/espeak.tar.gz
# come from scripts/gpu_bundle.sh.
# Results: $OUT/logs_stage<N>.tgz (fit logs: dev CER/ppl per epoch), $OUT/ckpt/*.ckpt (best dev
# checkpoints, no optimizer state), $OUT/results_stage3.json (every row's test WER/CER).
set -uo pipefail
START=$(date +%s)
el() { echo "[$(($(date +%s) - START)) s] $*"; }
STAGE=${STAGE:-1}
OUT=${OUT:-/tmp/domain_out}
ACCEL=${ACCEL:-gpu}            # cpu: a dry run of the same commands (with small UTTS_*, budgets)
REPO=$PWD
T=${TEXT_DIR:-$REPO/.cache/domain}     # prepare_text_domains.py output (+ ckpt/ of earlier stages)
D=${DATA_DIR:-$REPO/data/domain_text_speech}
R=${RUNS_DIR:-/tmp/domain_runs}
CK=$T/ckpt
LM_HIDDEN=${LM_HIDDEN:-512}
LM_TIME=${LM_TIME:-00:00:04:00}; CTC_TIME=${CTC_TIME:-00:00:04:15}
CALL_S=${CALL_S:-570}          # a device call's limit (600 s) less a margin
S2S_TIME=${S2S_TIME:-}; S2S_STEPS=${S2S_STEPS:-5000}   # S2S_TIME default: what the call has left
DEEP_TIME=${DEEP_TIME:-00:00:01:45}; FT_TIME=${FT_TIME:-00:00:01:45}
RETRY_TIME=${RETRY_TIME:-00:00:05:00}
BEAM=${BEAM:-4}
BETAS=${BETAS:-"0.2 0.4"}; ILM_RATIOS=${ILM_RATIOS:-"0.5"}   # lambda = ratio * beta
mkdir -p "$OUT" "$R" "$CK"
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh espeak || exit 1
[ "$ACCEL" = gpu ] && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SL="python3 -m speechlab.cli"

# shellcheck source=recipes/domain/speech.sh
source "$REPO/recipes/domain/speech.sh"   # the corpus settings (UTTS_A/B, FRAC_A/B), synth_domain
synth() {  # synth NAME: all of the domain's speech, once (kept WAVs are reused)
  [ -f "$D/$1/test.jsonl" ] || synth_domain "$1" "$OUT/synth_$1.log"
}
synth_all() {
  synth books && synth reviews || exit 1
  el "speech: A $(wc -l <"$D/books/train.jsonl")/$(wc -l <"$D/books/dev.jsonl")/$(wc -l <"$D/books/test.jsonl"), B $(wc -l <"$D/reviews/train.jsonl")/$(wc -l <"$D/reviews/dev.jsonl")/$(wc -l <"$D/reviews/test.jsonl") train/dev/test"
}
speech() {  # speech DOMAIN: the data overrides of a recipe
  echo --data.init_args.train_manifest "$D/$1/train.jsonl" --data.init_args.dev_manifest "$D/$1/dev.jsonl" \
    --data.init_args.test_manifest "$D/$1/test.jsonl" --data.init_args.num_workers 3
}
train_opts() {  # train_opts TIME STEPS
  echo --trainer.accelerator "$ACCEL" --trainer.max_time "$1" --trainer.max_steps "$2" \
    --trainer.check_val_every_n_epoch 1 \
    $([ "$ACCEL" = gpu ] && echo --trainer.precision bf16-mixed)
}
fit() {  # fit RUN RECIPE [args...]: train in $R/RUN (the recipe's exp/ paths are relative)
  local run=$1 recipe=$2; shift 2
  mkdir -p "$R/$run" && (cd "$R/$run" &&
    $SL fit --config "$REPO/recipes/tiny/$recipe.yaml" "$@" >"$OUT/fit_$run.log" 2>&1)
  local rc=$?
  echo "fit rc=$rc" >>"$OUT/fit_$run.log"
  return $rc
}
best() { ls "$R/$1"/exp/*/checkpoints/best.ckpt 2>/dev/null | head -1; }
keep_ckpt() {  # keep_ckpt RUN...: best.ckpt without optimizer state -> $OUT/ckpt/RUN.ckpt
  mkdir -p "$OUT/ckpt"
  python3 - "$R" "$OUT/ckpt" "$@" <<'EOF'
import glob, sys
sys.path.insert(0, "scripts")
from gpu_results import strip_checkpoint
runs, out = sys.argv[1], sys.argv[2]
for run in sys.argv[3:]:
    paths = glob.glob(f"{runs}/{run}/exp/*/checkpoints/best.ckpt")
    if not paths:
        print(f"{run}: no best.ckpt"); continue
    strip_checkpoint(paths[0], f"{out}/{run}.ckpt")
EOF
}
ck() {  # ck RUN: this stage's or an earlier stage's (carried) checkpoint of RUN
  local b; b=$(best "$1"); [ -n "$b" ] && { echo "$b"; return; }
  [ -f "$CK/$1.ckpt" ] && { echo "$CK/$1.ckpt"; return; }
  echo "missing checkpoint of $1 (neither $R/$1 nor $CK/$1.ckpt)" >&2; exit 1
}
summary() {  # summary RUN...: last 'training ended' line of each fit log
  for run in "$@"; do grep -hE "training ended|fit rc=" "$OUT/fit_$run.log" | tail -2 | tr '\n' ' ' | sed "s/^/$run: /"; echo; done
}
pack() {
  tar czf "$OUT/logs_stage$STAGE.tgz" -C "$OUT" $(cd "$OUT" && ls ./*.log 2>/dev/null) 2>/dev/null && rm -f "$OUT"/*.log
  el "stage $STAGE done"
}

case $STAGE in
1)
  lm() {  # lm DOMAIN: character LSTM LM on the domain's LM text (5 % held out for dev ppl)
    fit "lm_$1" rnnlm --data.init_args.train_text "$T/lm/$1.txt" --data.init_args.dev_text null \
      --data.init_args.max_tokens 8192 --model.init_args.hidden_size "$LM_HIDDEN" \
      --model.init_args.dropout 0.2 $(train_opts "$LM_TIME" 8000)
  }
  lm books & P1=$!
  lm reviews & P2=$!
  synth_all
  # shellcheck disable=SC2046
  fit ctc ctc $(speech books) $(train_opts "$CTC_TIME" 9000) & P3=$!
  md5sum "$D"/books/wavs/*.wav "$D"/reviews/wavs/*.wav 2>/dev/null | sed "s#$D/##" | gzip >"$OUT/wav_md5.txt.gz"
  wait $P1 $P2 $P3
  summary lm_books lm_reviews ctc
  grep -h "val/ppl" "$OUT"/fit_lm_*.log | tail -2
  keep_ckpt lm_books lm_reviews ctc
  ;;
2)
  synth_all   # instant on a warm machine; ~3 minutes on a fresh one (then the budget shrinks)
  if [ -z "$S2S_TIME" ]; then
    left=$((CALL_S - ($(date +%s) - START) - 80))
    S2S_TIME=$(printf "00:00:%02d:%02d" $((left / 60)) $((left % 60)))
  fi
  el "seq2seq budget $S2S_TIME each"
  s2s() {  # s2s RUN RECIPE [args]: from the CTC encoder; the decoder as CUDA graphs on the GPU
    local run=$1 recipe=$2; shift 2
    local graphs=(); [ "$ACCEL" = gpu ] && graphs=(--model.init_args.decoder.cuda_graphs true)
    # shellcheck disable=SC2046
    fit "$run" "$recipe" $(speech books) $(train_opts "$S2S_TIME" "$S2S_STEPS") \
      --model.init_args.init_checkpoint "$(ck ctc)" "${graphs[@]}" "$@" && return
    [ -n "$(best "$run")" ] && return  # stopped late: its best checkpoint stands
    # a failure before the first checkpoint (e.g. CUDA-graph capture): again, eager, shorter
    cp "$OUT/fit_$run.log" "$OUT/fit_${run}_failed.log"; rm -rf "${R:?}/$run"
    # shellcheck disable=SC2046
    fit "$run" "$recipe" $(speech books) $(train_opts "$RETRY_TIME" "$S2S_STEPS") \
      --model.init_args.init_checkpoint "$(ck ctc)" "$@"
  }
  s2s none seq2seq & P1=$!
  s2s cold seq2seq_cold --model.init_args.lm_checkpoint "$(ck lm_books)" & P2=$!
  wait $P1 $P2
  summary none cold
  keep_ckpt none cold
  ;;
3)
  synth_all
  LM_A=$(ck lm_books); LM_B=$(ck lm_reviews); NONE=$(ck none); COLD=$(ck cold)
  deep_opts=(--model.init_args.fusion deep --model.init_args.decoder.fusion_dim 128)
  # shellcheck disable=SC2046
  fit deep seq2seq $(speech books) $(train_opts "$DEEP_TIME" 1500) "${deep_opts[@]}" \
    --model.init_args.lm_checkpoint "$LM_A" --model.init_args.init_checkpoint "$NONE" \
    --model.init_args.freeze_seq2seq true & P1=$!
  ft=(--model.init_args.lr 0.0005 --model.init_args.warmup_steps 20 --model.init_args.ctc_weight 0.3)
  # shellcheck disable=SC2046
  fit ft_none seq2seq $(speech reviews) $(train_opts "$FT_TIME" 1500) "${ft[@]}" \
    --model.init_args.init_checkpoint "$NONE" & P2=$!
  # shellcheck disable=SC2046
  fit ft_cold seq2seq_cold $(speech reviews) $(train_opts "$FT_TIME" 1500) "${ft[@]}" \
    --model.init_args.init_checkpoint "$COLD" --model.init_args.lm_checkpoint "$LM_B" & P3=$!

  evaluate() {  # evaluate NAME CKPT MANIFEST BEAM [overrides]: speechlab test -> $R/test/NAME
    local name=$1 ckpt=$2 manifest=$3 beam=$4; shift 4
    $SL test --ckpt_path "$ckpt" --data.init_args.test_manifest "$manifest" \
      --data.init_args.num_workers 2 --trainer.accelerator "$ACCEL" --trainer.logger false \
      --trainer.enable_progress_bar false --model.init_args.beam_size "$beam" \
      --model.init_args.output_dir "$R/test/$name" --model.init_args.overwrite true "$@" \
      >"$OUT/test_$name.log" 2>&1 || echo "test $name failed: $(tail -1 "$OUT/test_$name.log")"
  }
  # beta (shallow) and lambda = ratio * beta (ILM) on B's dev set, the none model + B's LM
  PIDS=()
  for beta in $BETAS; do
    evaluate "dev_shallow_$beta" "$NONE" "$D/reviews/dev.jsonl" "$BEAM" \
      --model.init_args.test_lm_checkpoint "$LM_B" --model.init_args.lm_weight "$beta" & PIDS+=($!)
    for r in $ILM_RATIOS; do
      lam=$(python3 -c "print(round($r * $beta, 4))")
      evaluate "dev_ilm_${beta}_$lam" "$NONE" "$D/reviews/dev.jsonl" "$BEAM" \
        --model.init_args.test_lm_checkpoint "$LM_B" --model.init_args.lm_weight "$beta" \
        --model.init_args.ilm_weight "$lam" & PIDS+=($!)
    done
  done
  for p in "${PIDS[@]}"; do wait "$p"; done
  read -r BETA ILM_BETA ILM_LAMBDA < <(python3 - "$R/test" <<'EOF'
import glob, json, os, sys
res = {}
for path in glob.glob(f"{sys.argv[1]}/dev_*/wer.json"):
    w = json.load(open(path))  # ranked by dev WER, then CER
    res[os.path.basename(os.path.dirname(path))] = (w["test_word"]["rate"], w["test_char"]["rate"])
shallow = min((v, k) for k, v in res.items() if k.startswith("dev_shallow_"))
ilm = min((v, k) for k, v in res.items() if k.startswith("dev_ilm_"))
print(shallow[1].split("_")[-1], *ilm[1].split("_")[-2:])
EOF
)
  el "dev B: shallow beta=$BETA; ILM beta=$ILM_BETA lambda=$ILM_LAMBDA"
  wait $P1
  # shellcheck disable=SC2046
  fit ft_deep seq2seq $(speech reviews) $(train_opts "$FT_TIME" 1500) "${ft[@]}" "${deep_opts[@]}" \
    --model.init_args.init_checkpoint "$(ck deep)" --model.init_args.lm_checkpoint "$LM_B" & P4=$!
  DEEP=$(ck deep)
  rows() {  # rows PREFIX DOMAIN LM NONE_CKPT DEEP_CKPT COLD_CKPT
    local p=$1 d=$2 lm=$3 none=$4 deep=$5 cold=$6 m=$D/$2/test.jsonl pids=()
    for beam in 1 "$BEAM"; do
      evaluate "${p}none_${d}_b$beam" "$none" "$m" "$beam" & pids+=($!)
      evaluate "${p}shallow_${d}_b$beam" "$none" "$m" "$beam" --model.init_args.test_lm_checkpoint "$lm" \
        --model.init_args.lm_weight "$BETA" & pids+=($!)
      evaluate "${p}ilm_${d}_b$beam" "$none" "$m" "$beam" --model.init_args.test_lm_checkpoint "$lm" \
        --model.init_args.lm_weight "$ILM_BETA" --model.init_args.ilm_weight "$ILM_LAMBDA" & pids+=($!)
      evaluate "${p}deep_${d}_b$beam" "$deep" "$m" "$beam" --model.init_args.test_lm_checkpoint "$lm" & pids+=($!)
      evaluate "${p}cold_${d}_b$beam" "$cold" "$m" "$beam" --model.init_args.test_lm_checkpoint "$lm" & pids+=($!)
    done
    for q in "${pids[@]}"; do wait "$q"; done
  }
  for d in books reviews; do  # the CTC model the seq2seq encoders start from (greedy, no LM)
    $SL test --ckpt_path "$(ck ctc)" --data.init_args.test_manifest "$D/$d/test.jsonl" \
      --data.init_args.num_workers 2 --trainer.accelerator "$ACCEL" --trainer.logger false \
      --trainer.enable_progress_bar false \
      --model.init_args.output_dir "$R/test/ctc_${d}_b1" --model.init_args.overwrite true \
      >"$OUT/test_ctc_$d.log" 2>&1 || echo "test ctc $d failed: $(tail -1 "$OUT/test_ctc_$d.log")"
  done
  rows "" books "$LM_A" "$NONE" "$DEEP" "$COLD"
  rows "" reviews "$LM_B" "$NONE" "$DEEP" "$COLD"
  wait $P2 $P3 $P4
  summary deep ft_none ft_cold ft_deep
  rows ft_ reviews "$LM_B" "$(ck ft_none)" "$(ck ft_deep)" "$(ck ft_cold)"
  python3 - "$R/test" "$OUT/results_stage3.json" "$BETA" "$ILM_BETA" "$ILM_LAMBDA" <<'EOF'
import glob, json, os, sys
rows = {"weights": {"beta": float(sys.argv[3]), "ilm_beta": float(sys.argv[4]), "ilm_lambda": float(sys.argv[5])}}
for path in sorted(glob.glob(f"{sys.argv[1]}/*/wer.json")):
    w = json.load(open(path))
    rows[os.path.basename(os.path.dirname(path))] = {"wer": w["test_word"]["rate"], "cer": w["test_char"]["rate"], "utterances": w["utterances"]}
    print(os.path.basename(os.path.dirname(path)), rows[os.path.basename(os.path.dirname(path))])
json.dump(rows, open(sys.argv[2], "w"), indent=1)
EOF
  keep_ckpt deep ft_none ft_cold ft_deep
  ;;
esac
pack
