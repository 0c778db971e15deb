#!/usr/bin/env bash
# make demo: synthesize the embedded corpus, train the CTC baseline on the CPU, test it.
set -euo pipefail
DATA=${1:-data/tiny}
N=${2:-1800}
EXP=exp/tiny_ctc
# one torch thread for training, the data worker on the other core: on 2 cores two OpenMP
# threads per process oversubscribe the CPU (3x slower steps measured under load)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)
echo "== 1/3 synthesizing $N utterances with espeak-ng into $DATA (resumes if present)"
speechlab data synth --out "$DATA" --utterances "$N" --seed 0
echo "== 2/3 training the CTC baseline (recipes/tiny/ctc.yaml; at most 11 minutes)"
speechlab fit --config recipes/tiny/ctc.yaml --trainer.enable_progress_bar "${PROGRESS:-true}"
echo "== 3/3 testing the best checkpoint on $DATA/test.jsonl"
# speechlab test refuses to replace earlier results; the demo trains its model afresh every
# run, so its own test results (hyps.jsonl, wer.json) replace those of the previous demo
speechlab test --config recipes/tiny/ctc.yaml --ckpt_path "$EXP/checkpoints/best.ckpt" \
  --model.init_args.overwrite true
speechlab score --ref "$DATA/test.jsonl" --hyp "$EXP/hyps.jsonl" --show-alignments 3
end=$(date +%s)
cat <<EOT

demo finished in $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s
  checkpoint:  $EXP/checkpoints/best.ckpt (and last.ckpt)
  TensorBoard: tensorboard --logdir $EXP/tb
  hypotheses:  $EXP/hyps.jsonl   summary: $EXP/wer.json
EOT
