#!/usr/bin/env bash
# make demo: synthesize the embedded corpus, train Gram-CTC on the CPU, then decode the test set
# greedily and with beam search + a KenLM word 3-gram built from the training transcripts (LM
# weight and word score tuned on dev), and print both WERs side by side.
set -euo pipefail
DATA=${1:-data/tiny}
N=${2:-1800}
RECIPE=recipes/tiny/gram_ctc_joint.yaml
EXP=exp/tiny_gram_ctc_joint
LM=exp/lm/tiny_3gram.arpa
BEAM=(--method beam --beam-size 16 --lm "$LM" --lexicon lm)
# one torch thread for training, the data worker on the other core: on 2 cores two OpenMP
# threads per process oversubscribe the CPU (3x slower steps measured under load)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)
elapsed() { local s=$(( $(date +%s) - start )); echo "$((s / 60)) min $((s % 60)) s"; }

echo "== 1/5 synthesizing $N utterances with espeak-ng into $DATA (resumes if present)"
speechlab data synth --out "$DATA" --utterances "$N" --seed 0

echo "== 2/5 training Gram-CTC ($RECIPE: characters + the 50 most frequent bigrams, with a CTC head whose weight decays from 0.5 to 0 over 700 steps; at most 11 minutes) [$(elapsed)]"
speechlab fit --config "$RECIPE" --trainer.enable_progress_bar "${PROGRESS:-true}"

echo "== 3/5 greedy decoding of $DATA/test.jsonl with the best checkpoint (speechlab test) [$(elapsed)]"
# speechlab test refuses to replace earlier results; the demo trains its model afresh every
# run, so its own test results (hyps.jsonl, wer.json) replace those of the previous demo
speechlab test --config "$RECIPE" --ckpt_path "$EXP/checkpoints/best.ckpt" \
  --model.init_args.overwrite true

echo "== 4/5 a word 3-gram LM from the training transcripts (KenLM; built from source on first use) [$(elapsed)]"
speechlab lm ngram --manifest "$DATA/train.jsonl" --order 3 --out "$LM" --force

echo "== 5/5 beam search + LM: LM weight and word score tuned on dev, then the test set [$(elapsed)]"
speechlab decode --checkpoint "$EXP/checkpoints/best.ckpt" --manifest "$DATA/dev.jsonl" "${BEAM[@]}" \
  --lm-weight 0.1 0.2 0.3 0.5 0.8 --word-score -1 0 1 2 --json "$EXP/beam_lm_dev.json" --force
read -r ALPHA BETA < <(python3 -c 'import json, sys
rows = json.load(open(sys.argv[1]))["results"]
best = min(rows, key=lambda r: (r["wer"], r["cer"]))
print(best["lm_weight"], best["word_score"])' "$EXP/beam_lm_dev.json")
speechlab decode --checkpoint "$EXP/checkpoints/best.ckpt" --manifest "$DATA/test.jsonl" "${BEAM[@]}" \
  --lm-weight "$ALPHA" --word-score "$BETA" --out "$EXP/beam_lm_hyps.jsonl" \
  --json "$EXP/beam_lm_test.json" --force
speechlab score --ref "$DATA/test.jsonl" --hyp "$EXP/beam_lm_hyps.jsonl" --worst 0 --show-alignments 2

python3 - "$DATA/test.jsonl" "$EXP/hyps.jsonl" "$EXP/beam_lm_hyps.jsonl" "$ALPHA" "$BETA" <<'EOF'
import sys
from speechlab.score import HYP_FIELDS, REF_FIELDS, read_transcripts, score
ref, greedy, beam, alpha, beta = sys.argv[1:]
refs = read_transcripts(ref, REF_FIELDS)
print(f"\ntest set: {len(refs)} utterances of {ref}, speechlab's scorer")
print(f"  {'decoding':58s} {'WER %':>7s} {'CER %':>7s}")
for name, hyp in (("greedy, no LM", greedy),
                  (f"beam 16 + word 3-gram LM (alpha {alpha}, beta {beta}), lexicon", beam)):
    r = score(refs, read_transcripts(hyp, HYP_FIELDS), normalize=True)
    print(f"  {name:58s} {100 * r.words.rate:7.2f} {100 * r.chars.rate:7.2f}")
EOF
cat <<EOT

demo finished in $(elapsed)
  checkpoint:  $EXP/checkpoints/best.ckpt (and last.ckpt)
  TensorBoard: tensorboard --logdir $EXP/tb
  hypotheses:  $EXP/hyps.jsonl (greedy), $EXP/beam_lm_hyps.jsonl (beam + LM)
  LM:          $LM; the dev grid: $EXP/beam_lm_dev.json
EOT
