#!/usr/bin/env bash
# The Cold Fusion domain-transfer experiment, small enough for a 2-core CPU (docs/cold_fusion.md).
#   domain A = "home" speech (espeak-ng, speechlab's sentence generator), domain B = "numbers".
#   LMs: character LSTMs on each domain's generator text (dev/test transcripts removed).
#   Models trained on A: none, cold (home LM), deep (baseline + home LM, gate/output trained);
#   shallow = the none model + an LM at search time. Tested on A with the home LM and on B with
#   the numbers LM swapped in (no retraining); then fine-tuned on 10% of B speech.
# usage: bash recipes/domain/run.sh [UTTERANCES_PER_DOMAIN=600]   (results: exp/domain/results)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-600}
D=data/domain
E=exp/domain
BETA=${BETA:-0.3}          # shallow fusion weight
BEAM=${BEAM:-4}
export OMP_NUM_THREADS=1   # two runs side by side on 2 cores
P=--trainer.enable_progress_bar=false

echo "== data: $N utterances per domain"
speechlab data synth --out $D/home --domains home --utterances "$N" --seed 10 --jobs 2
speechlab data synth --out $D/numbers --domains numbers --utterances "$N" --seed 20 --jobs 2
python recipes/domain/make_text.py $D

echo "== language models"
fit() {  # name config: train unless the run already finished (its last.ckpt exists)
  if [ -f $E/"$1"/checkpoints/last.ckpt ]; then echo "$1: trained already ($E/$1)"; return; fi
  rm -rf "${E:?}/$1"
  speechlab fit --config "$2" $P > $E."$1".log 2>&1
}
mkdir -p $E
fit lm_home recipes/domain/lm_home.yaml &
fit lm_numbers recipes/domain/lm_numbers.yaml
wait
for d in home numbers; do
  speechlab validate --config recipes/domain/lm_$d.yaml --ckpt_path $E/lm_$d/checkpoints/last.ckpt \
    --data.init_args.dev_text=$D/home/test.jsonl $P 2>&1 | grep -E "ppl" | sed "s/^/lm_$d on home test: /" || true
  speechlab validate --config recipes/domain/lm_$d.yaml --ckpt_path $E/lm_$d/checkpoints/last.ckpt \
    --data.init_args.dev_text=$D/numbers/test.jsonl $P 2>&1 | grep -E "ppl" | sed "s/^/lm_$d on numbers test: /" || true
done

echo "== seq2seq on domain A (none and cold side by side, then deep from the baseline)"
fit none recipes/domain/seq2seq_none.yaml &
fit cold recipes/domain/seq2seq_cold.yaml
wait
fit deep recipes/domain/seq2seq_deep.yaml

run_test() {  # name config checkpoint test_manifest [overrides...]
  # a re-run of this script tests again (BEAM/BETA may have changed): it replaces its own
  # earlier results in $E/results/NAME (speechlab test refuses that without overwrite)
  local name=$1 cfg=$2 ckpt=$3 manifest=$4
  shift 4
  speechlab test --config "$cfg" --ckpt_path "$ckpt" --data.init_args.test_manifest="$manifest" \
    --model.init_args.output_dir=$E/results/"$name" --model.init_args.overwrite=true \
    --model.init_args.beam_size=$BEAM \
    --trainer.logger=false $P "$@" > $E/results/"$name".log 2>&1
  grep -E "^test:" $E/results/"$name".log | sed "s/^/$name  /"
}
mkdir -p $E/results
echo "== test: in-domain (home LM) and out-of-domain (numbers LM swapped in)"
for d in home numbers; do
  LM=$E/lm_$d/checkpoints/last.ckpt
  run_test none_$d recipes/domain/seq2seq_none.yaml $E/none/checkpoints/best.ckpt $D/$d/test.jsonl
  run_test shallow_$d recipes/domain/seq2seq_none.yaml $E/none/checkpoints/best.ckpt $D/$d/test.jsonl \
    --model.init_args.test_lm_checkpoint=$LM --model.init_args.lm_weight=$BETA
  run_test deep_$d recipes/domain/seq2seq_deep.yaml $E/deep/checkpoints/best.ckpt $D/$d/test.jsonl \
    --model.init_args.test_lm_checkpoint=$LM
  run_test cold_$d recipes/domain/seq2seq_cold.yaml $E/cold/checkpoints/best.ckpt $D/$d/test.jsonl \
    --model.init_args.test_lm_checkpoint=$LM
done

echo "== fine-tuning on 10% of domain-B speech"
fit ft_none recipes/domain/finetune_none.yaml &
fit ft_cold recipes/domain/finetune_cold.yaml
wait
fit ft_deep recipes/domain/finetune_deep.yaml
LM=$E/lm_numbers/checkpoints/last.ckpt
run_test ft_none_numbers recipes/domain/finetune_none.yaml $E/ft_none/checkpoints/best.ckpt $D/numbers/test.jsonl
run_test ft_shallow_numbers recipes/domain/finetune_none.yaml $E/ft_none/checkpoints/best.ckpt $D/numbers/test.jsonl \
  --model.init_args.test_lm_checkpoint=$LM --model.init_args.lm_weight=$BETA
run_test ft_deep_numbers recipes/domain/finetune_deep.yaml $E/ft_deep/checkpoints/best.ckpt $D/numbers/test.jsonl
run_test ft_cold_numbers recipes/domain/finetune_cold.yaml $E/ft_cold/checkpoints/best.ckpt $D/numbers/test.jsonl

python recipes/domain/report.py $E
