#!/usr/bin/env bash
# The GAN-robust encoder study on the CPU (docs/robust_encoder.md; GPU scale: run_gpu.sh): train the four robust_* recipes one
# after another on data/robust (recipes/robust/prepare_cpu.sh), same batches and the same number of
# encoder updates each (recipes: max_steps 600), then evaluate the last checkpoints on every test set.
# usage: recipes/robust/run.sh [CONFIGS="clean augment l1 gan"]
set -euo pipefail
CONFIGS=${1:-clean augment l1 gan}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one torch thread: two collapse on a shared 2-core CPU
for cfg in $CONFIGS; do
  exp=exp/tiny_robust_$cfg
  rm -rf "$exp"
  start=$(date +%s)
  speechlab fit --config "recipes/tiny/robust_$cfg.yaml" --trainer.enable_progress_bar=false
  echo "$cfg: trained in $(( $(date +%s) - start )) s" | tee -a exp/robust_times.txt
done
# the study also reports the first GAN run (lambda_adv 0.1, embeddings collapsed), reproduced by
#   speechlab fit --config recipes/tiny/robust_gan.yaml --model.init_args.lambda_adv=0.1
#   mv exp/tiny_robust_gan exp/tiny_robust_gan_lambda0.1
CKPTS=()   # every configuration trained so far (a rerun of some keeps the others)
for cfg in clean augment l1 gan gan_lambda0.1; do
  ckpt=exp/tiny_robust_$cfg/checkpoints/last.ckpt
  [[ -f $ckpt ]] && CKPTS+=("$cfg=$ckpt")
done
python recipes/robust/evaluate.py --force --sets data/robust/test --out exp/robust_eval --ckpt "${CKPTS[@]}" \
  --json docs/robust_results.json
