#!/usr/bin/env bash
# The CPU decodes of the real-text domain study (issue 14; recipes/domain/run_gpu.sh trains the
# models and decodes the other rows), with the `none` model (and its fine-tuned copy ft_none):
#   ngram: shallow fusion of a character 6-gram (`speechlab lm ngram --unit char` on each
#          domain's LM text), without and with internal-LM estimation (ILM). Here, because the
#          kenlm module does not load beside torch on the GPU machine (recipes/fsdd/run_gpu.sh).
#   lstm:  the LSTM-LM shallow and shallow + ILM rows with a wider weight grid on B's dev set
#          than the GPU call had time for; the test rows are re-decoded when the pick differs
#          from the GPU one (CPU and GPU decodes agree: the same dev shallow beta 0.2 WER / CER,
#          0.256449 / 0.077065; the ILM test rows within 0.03 WER points, fp32 ties in the beam).
#   ppl:   each LSTM LM's character perplexity on each domain's speech sentences (none of them
#          in either LM's text): how different the two domains are for the LMs.
# Needs the checkpoints of run_gpu.sh in $T/ckpt (none, ft_none, lm_reviews, lm_books) and renders
# the dev/test audio with `speechlab data synth --splits` (the same files as on the GPU machine:
# checked against the md5 sums that stage 1 wrote, $MD5). Resumable (finished decodes are kept).
#
#   MD5=/path/to/wav_md5.txt.gz bash recipes/domain/run_cpu_decode.sh   # -> $OUT/results_cpu.json
set -uo pipefail
START=$(date +%s)
el() { echo "[$(($(date +%s) - START)) s] $*"; }
REPO=$PWD
T=${TEXT_DIR:-$REPO/.cache/domain}
D=${DATA_DIR:-$REPO/data/domain_text_speech}
OUT=${OUT:-$REPO/exp/domain_cpu}
MD5=${MD5:-}
BEAM=${BEAM:-4}
NGRAM_BETAS=${NGRAM_BETAS:-"0.2 0.4 0.6 0.8 1.0"}
LSTM_BETAS=${LSTM_BETAS:-"0.1 0.2 0.3 0.4"}            # shallow
LSTM_ILM_BETAS=${LSTM_ILM_BETAS:-"0.2 0.4 0.6 0.8"}    # shallow + ILM
ILM_RATIO=${ILM_RATIO:-0.5}                              # lambda = ratio * beta
JOBS=${JOBS:-2}
SL="python3 -m speechlab.cli"
mkdir -p "$OUT/logs" "$OUT/lm" "$OUT/test"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1

# the audio: the splits the GPU machine rendered, deterministic by seed (run_gpu.sh's settings)
# shellcheck source=recipes/domain/speech.sh
source "$REPO/recipes/domain/speech.sh"
synth_domain books "$OUT/logs/synth_books.log" --splits test || exit 1
synth_domain reviews "$OUT/logs/synth_reviews.log" --splits dev test || exit 1
if [ -n "$MD5" ]; then
  (cd "$D" && md5sum books/wavs/*.wav reviews/wavs/*.wav) | sort -k2 >"$OUT/md5_here.txt"
  differ=$(zcat -f "$MD5" | sort -k2 | join -1 2 -2 2 - "$OUT/md5_here.txt" | awk '$2!=$3' | wc -l)
  el "audio: $(wc -l <"$OUT/md5_here.txt") WAVs, $differ differ from the GPU machine's"
  [ "$differ" -eq 0 ] || exit 1
fi
for d in books reviews; do
  [ -f "$OUT/lm/${d}_char6.bin" ] || $SL lm ngram --text "$T/lm/$d.txt" --order 6 --unit char \
    --out "$OUT/lm/${d}_char6.bin" >"$OUT/logs/ngram_$d.log" 2>&1 || { tail -1 "$OUT/logs/ngram_$d.log"; exit 1; }
done

evaluate() {  # evaluate NAME CKPT MANIFEST [--model.init_args.X V ...]: -> $OUT/test/NAME/wer.json
  local name=$1 ckpt=$2 manifest=$3; shift 3
  [ -f "$OUT/test/$name/wer.json" ] && return 0   # resumable
  $SL test --ckpt_path "$ckpt" --data.init_args.test_manifest "$manifest" \
    --data.init_args.num_workers 0 --trainer.accelerator cpu --trainer.logger false \
    --trainer.enable_progress_bar false \
    --model.init_args.beam_size "$BEAM" --model.init_args.output_dir "$OUT/test/$name" \
    --model.init_args.overwrite true "$@" >"$OUT/logs/test_$name.log" 2>&1 ||
    echo "test $name failed: $(tail -1 "$OUT/logs/test_$name.log")"
}
parallel() {  # run the queued evaluate argument lines, $JOBS at a time
  local pids=() line
  for line in "${QUEUE[@]}"; do
    # shellcheck disable=SC2086
    evaluate $line & pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done
  QUEUE=()
}
pick() {  # pick PREFIX: the weights (name fields after PREFIX) of the best dev run (WER, then CER)
  python3 - "$OUT/test" "$1" <<'EOF'
import glob, json, os, sys
res = []
for path in glob.glob(f"{sys.argv[1]}/{sys.argv[2]}*/wer.json"):
    w = json.load(open(path))
    res.append((w["test_word"]["rate"], w["test_char"]["rate"], os.path.basename(os.path.dirname(path))))
print(*min(res)[2][len(sys.argv[2]):].split("_"))
EOF
}
half() { python3 -c "print(round($ILM_RATIO * $1, 4))"; }
NONE=$T/ckpt/none.ckpt; FT_NONE=$T/ckpt/ft_none.ckpt; LM_A=$T/ckpt/lm_books.ckpt; LM_B=$T/ckpt/lm_reviews.ckpt
NG_A=$OUT/lm/books_char6.bin; NG_B=$OUT/lm/reviews_char6.bin
M=--model.init_args
QUEUE=()
for b in $NGRAM_BETAS; do
  QUEUE+=("dev_ng_$b $NONE $D/reviews/dev.jsonl $M.ngram_lm $NG_B $M.ngram_weight $b"
          "dev_ngilm_${b}_$(half "$b") $NONE $D/reviews/dev.jsonl $M.ngram_lm $NG_B $M.ngram_weight $b $M.ilm_weight $(half "$b")")
done
for b in $LSTM_BETAS; do
  QUEUE+=("dev_shallow_$b $NONE $D/reviews/dev.jsonl $M.test_lm_checkpoint $LM_B $M.lm_weight $b")
done
for b in $LSTM_ILM_BETAS; do
  QUEUE+=("dev_ilm_${b}_$(half "$b") $NONE $D/reviews/dev.jsonl $M.test_lm_checkpoint $LM_B $M.lm_weight $b $M.ilm_weight $(half "$b")")
done
parallel
read -r NG_BETA < <(pick dev_ng_)
read -r NGI_BETA NGI_LAMBDA < <(pick dev_ngilm_)
read -r SH_BETA < <(pick dev_shallow_)
read -r ILM_BETA ILM_LAMBDA < <(pick dev_ilm_)
el "dev B picks: 6-gram beta=$NG_BETA; 6-gram + ILM beta=$NGI_BETA lambda=$NGI_LAMBDA; LSTM shallow beta=$SH_BETA; LSTM + ILM beta=$ILM_BETA lambda=$ILM_LAMBDA"
# test outputs are named with their weights (NAME__w...), so a wider grid's new pick re-decodes
ng=("$M.ngram_weight $NG_BETA" "$M.ngram_weight $NGI_BETA $M.ilm_weight $NGI_LAMBDA")
for set in "books $NONE $NG_A $LM_A" "reviews $NONE $NG_B $LM_B" "ft_reviews $FT_NONE $NG_B $LM_B"; do
  read -r name ckpt ngram lm <<<"$set"
  d=${name#ft_}; m=$D/$d/test.jsonl; p=${name%"$d"}
  QUEUE+=("${p}ngram_${d}_b${BEAM}__w$NG_BETA $ckpt $m $M.ngram_lm $ngram ${ng[0]}"
          "${p}ngramilm_${d}_b${BEAM}__w${NGI_BETA}_$NGI_LAMBDA $ckpt $m $M.ngram_lm $ngram ${ng[1]}"
          "${p}shallow_${d}_b${BEAM}__w$SH_BETA $ckpt $m $M.test_lm_checkpoint $lm $M.lm_weight $SH_BETA"
          "${p}ilm_${d}_b${BEAM}__w${ILM_BETA}_$ILM_LAMBDA $ckpt $m $M.test_lm_checkpoint $lm $M.lm_weight $ILM_BETA $M.ilm_weight $ILM_LAMBDA")
done
printf '%s\n' "${QUEUE[@]%% *}" >"$OUT/test/current"   # this pick's test outputs
parallel
python3 - "$OUT/test" "$OUT/results_cpu.json" "$NG_BETA" "$NGI_BETA" "$NGI_LAMBDA" "$SH_BETA" \
  "$ILM_BETA" "$ILM_LAMBDA" <<'EOF'
import glob, json, os, sys
names = ("ngram_beta", "ngram_ilm_beta", "ngram_ilm_lambda", "beta", "ilm_beta", "ilm_lambda")
rows = {"weights": dict(zip(names, map(float, sys.argv[3:])))}
current = set(open(f"{sys.argv[1]}/current").read().split())
for path in sorted(glob.glob(f"{sys.argv[1]}/*/wer.json")):
    w = json.load(open(path))
    name = os.path.basename(os.path.dirname(path))
    if not (name.startswith("dev_") or name in current):
        continue
    rows[name.split("__")[0]] = {"wer": w["test_word"]["rate"], "cer": w["test_char"]["rate"],
                                 "utterances": w["utterances"]}
    print(name, rows[name.split("__")[0]])
json.dump(rows, open(sys.argv[2], "w"), indent=1)
EOF
for lm in books reviews; do
  for text in books reviews; do
    [ -f "$OUT/ppl/${lm}_on_$text/results.json" ] && continue
    $SL test --ckpt_path "$T/ckpt/lm_$lm.ckpt" --data.init_args.test_text "$T/${text}_speech.txt" \
      --trainer.accelerator cpu --trainer.logger false --trainer.enable_progress_bar false \
      --model.init_args.output_dir "$OUT/ppl/${lm}_on_$text" \
      --model.init_args.overwrite true >"$OUT/logs/ppl_${lm}_on_$text.log" 2>&1 ||
      echo "ppl $lm on $text failed: $(tail -1 "$OUT/logs/ppl_${lm}_on_$text.log")"
  done
done
el "done: $OUT/results_cpu.json, $OUT/ppl"
