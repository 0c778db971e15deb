#!/usr/bin/env bash
# LibriSpeech on one GPU, end to end: manifests, then CTC, Gram-CTC, the RNN LM and Cold Fusion
# (fit, then test on test-clean). Sized for one H200 (bf16-mixed); not run at scale yet.
#   bash recipes/librispeech/run.sh /data/LibriSpeech        # the folder holding train-clean-100/ ...
# Each step resumes or is skipped when its output exists; a killed fit resumes with
#   speechlab fit --config recipes/librispeech/R.yaml --ckpt_path exp/librispeech_R/checkpoints/last.ckpt
# Several GPUs / nodes: see the commands in recipes/librispeech/_trainer.yaml and docs/ddp.md, e.g.
#   torchrun --nproc_per_node 8 -m speechlab.cli fit --config recipes/librispeech/ctc.yaml \
#       --trainer.devices 8 --trainer.strategy ddp
set -euo pipefail
CORPUS=${1:?usage: run.sh CORPUS_DIR (the LibriSpeech/ folder)}
DATA=data/librispeech

# 1. manifests: data/librispeech/{train-clean-100,dev-clean,test-clean}.jsonl (kept when present)
for part in train-clean-100 dev-clean test-clean; do
  [ -f "$DATA/$part.jsonl" ] || speechlab data prepare librispeech --corpus-dir "$CORPUS" \
      --out "$DATA" --parts "$part" --num-jobs 8
done

fit_test() {  # fit_test RECIPE: train (unless best.ckpt exists), then test best.ckpt on test-clean
  local recipe=recipes/librispeech/$1.yaml root=exp/librispeech_$1
  [ -f "$root/checkpoints/best.ckpt" ] || speechlab fit --config "$recipe"
  speechlab test --config "$recipe" --ckpt_path "$root/checkpoints/best.ckpt" --model.init_args.overwrite true
}

# 2. CTC and Gram-CTC: exp/librispeech_{ctc,gram_ctc}/{wer.json,hyps.jsonl}
fit_test ctc
fit_test gram_ctc
speechlab score --ref "$DATA/test-clean.jsonl" --hyp exp/librispeech_ctc/hyps.jsonl
speechlab score --ref "$DATA/test-clean.jsonl" --hyp exp/librispeech_gram_ctc/hyps.jsonl

# 3. the character LM (perplexity on test-clean in exp/librispeech_rnnlm/results.json), then
#    Cold Fusion with it (seq2seq_cold.yaml reads exp/librispeech_rnnlm/checkpoints/best.ckpt)
fit_test rnnlm
fit_test seq2seq_cold
speechlab score --ref "$DATA/test-clean.jsonl" --hyp exp/librispeech_seq2seq_cold/hyps.jsonl
