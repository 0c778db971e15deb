#!/usr/bin/env bash
# The KenLM rows of the real-text domain study (issue 14; recipes/domain/run_gpu.sh trains the
# models): shallow fusion of a character 6-gram (`speechlab lm ngram --unit char`, on each
# domain's LM text) with the seq2seq `none` model, without and with internal-LM estimation.
# Decoded here on the CPU, because the kenlm module does not load beside torch on the GPU
# machine (recipes/run_gpu_gram_ctc.sh). Needs the checkpoints of run_gpu.sh (none, ft_none) in
# $T/ckpt and renders the dev/test audio it needs with `speechlab data synth --splits` (the same
# files as on the GPU machine: checked against the md5 sums stage 1 wrote, $MD5).
#
#   MD5=/path/to/wav_md5.txt.gz bash recipes/domain/run_cpu_kenlm.sh   # -> $OUT/results_kenlm.json
set -uo pipefail
START=$(date +%s)
el() { echo "[$(($(date +%s) - START)) s] $*"; }
REPO=$PWD
T=${TEXT_DIR:-$REPO/.cache/domain}
D=${DATA_DIR:-$REPO/data/domain_text_speech}
OUT=${OUT:-$REPO/exp/domain_kenlm}
LM=$OUT/lm
MD5=${MD5:-}
BEAM=${BEAM:-4}
BETAS=${BETAS:-"0.2 0.4 0.6"}; ILM_RATIO=${ILM_RATIO:-0.5}   # lambda = ratio * beta
JOBS=${JOBS:-2}
SL="python3 -m speechlab.cli"
mkdir -p "$OUT/logs" "$LM"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1

# the audio: the splits the GPU machine rendered, deterministic by seed (run_gpu.sh's settings)
$SL data synth --out "$D/books" --text "$T/books_speech.txt" --utterances 10800 --seed 141 \
  --jobs "$JOBS" --dev-fraction 0.0277778 --test-fraction 0.0462963 --id-prefix books \
  --splits test >"$OUT/logs/synth_books.log" 2>&1 || { tail -1 "$OUT/logs/synth_books.log"; exit 1; }
$SL data synth --out "$D/reviews" --text "$T/reviews_speech.txt" --utterances 1900 --seed 142 \
  --jobs "$JOBS" --dev-fraction 0.1578948 --test-fraction 0.3157895 --id-prefix reviews \
  --splits dev test >"$OUT/logs/synth_reviews.log" 2>&1 || { tail -1 "$OUT/logs/synth_reviews.log"; exit 1; }
if [ -n "$MD5" ]; then
  (cd "$D" && md5sum books/wavs/*.wav reviews/wavs/*.wav) | sort -k2 >"$OUT/md5_here.txt"
  differ=$(zcat -f "$MD5" | sort -k2 | join -1 2 -2 2 - "$OUT/md5_here.txt" | awk '$2!=$3' | wc -l)
  el "audio: $(wc -l <"$OUT/md5_here.txt") WAVs, $differ differ from the GPU machine's"
  [ "$differ" -eq 0 ] || exit 1
fi
for d in books reviews; do
  [ -f "$LM/${d}_char6.bin" ] || $SL lm ngram --text "$T/lm/$d.txt" --order 6 --unit char \
    --out "$LM/${d}_char6.bin" >"$OUT/logs/ngram_$d.log" 2>&1 || { tail -1 "$OUT/logs/ngram_$d.log"; exit 1; }
done

evaluate() {  # evaluate NAME CKPT MANIFEST NGRAM BETA [LAMBDA]: -> $OUT/test/NAME/wer.json
  local name=$1 ckpt=$2 manifest=$3 ngram=$4 beta=$5 lam=${6:-0}
  [ -f "$OUT/test/$name/wer.json" ] && return 0   # resumable
  $SL test --ckpt_path "$ckpt" --data.init_args.test_manifest "$manifest" \
    --data.init_args.num_workers 0 --trainer.accelerator cpu --trainer.logger false \
    --trainer.enable_progress_bar false --model.init_args.beam_size "$BEAM" \
    --model.init_args.ngram_lm "$ngram" --model.init_args.ngram_weight "$beta" \
    --model.init_args.ilm_weight "$lam" --model.init_args.output_dir "$OUT/test/$name" \
    --trainer.default_root_dir "$OUT/test/$name" \
    --model.init_args.overwrite true >"$OUT/logs/test_$name.log" 2>&1 ||
    echo "test $name failed: $(tail -1 "$OUT/logs/test_$name.log")"
}
parallel() {  # run the queued evaluate commands, $JOBS at a time
  local pids=() cmd
  for cmd in "${QUEUE[@]}"; do
    eval "evaluate $cmd" & pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done
  QUEUE=()
}
NONE=$T/ckpt/none.ckpt; FT_NONE=$T/ckpt/ft_none.ckpt
QUEUE=()
for beta in $BETAS; do
  lam=$(python3 -c "print(round($ILM_RATIO * $beta, 4))")
  QUEUE+=("dev_ng_$beta $NONE $D/reviews/dev.jsonl $LM/reviews_char6.bin $beta"
          "dev_ngilm_${beta}_$lam $NONE $D/reviews/dev.jsonl $LM/reviews_char6.bin $beta $lam")
done
parallel
read -r BETA ILM_BETA ILM_LAMBDA < <(python3 - "$OUT/test" <<'EOF'
import glob, json, os, sys
res = {}
for path in glob.glob(f"{sys.argv[1]}/dev_*/wer.json"):
    w = json.load(open(path))  # ranked by dev WER, then CER
    res[os.path.basename(os.path.dirname(path))] = (w["test_word"]["rate"], w["test_char"]["rate"])
ng = min((v, k) for k, v in res.items() if k.startswith("dev_ng_"))
ilm = min((v, k) for k, v in res.items() if k.startswith("dev_ngilm_"))
print(ng[1].split("_")[-1], *ilm[1].split("_")[-2:])
EOF
)
el "dev B: 6-gram beta=$BETA; 6-gram + ILM beta=$ILM_BETA lambda=$ILM_LAMBDA"
picked="$BETA $ILM_BETA $ILM_LAMBDA"   # test outputs of other weights (a wider grid) are stale
if [ "$(cat "$OUT/test/picked" 2>/dev/null)" != "$picked" ]; then
  find "$OUT/test" -mindepth 1 -maxdepth 1 -type d ! -name 'dev_*' -exec rm -rf {} +
  echo "$picked" >"$OUT/test/picked"
fi
QUEUE=("ngram_books_b$BEAM $NONE $D/books/test.jsonl $LM/books_char6.bin $BETA"
       "ngramilm_books_b$BEAM $NONE $D/books/test.jsonl $LM/books_char6.bin $ILM_BETA $ILM_LAMBDA"
       "ngram_reviews_b$BEAM $NONE $D/reviews/test.jsonl $LM/reviews_char6.bin $BETA"
       "ngramilm_reviews_b$BEAM $NONE $D/reviews/test.jsonl $LM/reviews_char6.bin $ILM_BETA $ILM_LAMBDA"
       "ft_ngram_reviews_b$BEAM $FT_NONE $D/reviews/test.jsonl $LM/reviews_char6.bin $BETA"
       "ft_ngramilm_reviews_b$BEAM $FT_NONE $D/reviews/test.jsonl $LM/reviews_char6.bin $ILM_BETA $ILM_LAMBDA")
parallel
python3 - "$OUT/test" "$OUT/results_kenlm.json" "$BETA" "$ILM_BETA" "$ILM_LAMBDA" <<'EOF'
import glob, json, os, sys
rows = {"weights": {"ngram_beta": float(sys.argv[3]), "ngram_ilm_beta": float(sys.argv[4]),
                    "ngram_ilm_lambda": float(sys.argv[5])}}
for path in sorted(glob.glob(f"{sys.argv[1]}/*/wer.json")):
    w = json.load(open(path))
    name = os.path.basename(os.path.dirname(path))
    rows[name] = {"wer": w["test_word"]["rate"], "cer": w["test_char"]["rate"], "utterances": w["utterances"]}
    print(name, rows[name])
json.dump(rows, open(sys.argv[2], "w"), indent=1)
EOF
el "done: $OUT/results_kenlm.json"
