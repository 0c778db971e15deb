#!/usr/bin/env bash
# The GAN-robust encoder study at GPU scale (issue 15), on the H200 machine, resumable across
# device calls while the machine stays warm (the corpus and runs live under /tmp/robust):
#   1. data   recipes/robust/prepare.sh (paired corpus, held-out real noise/RIRs, test sets; ~3 min)
#   2. ctc    the warm start: recipes/tiny/ctc.yaml (GRU encoder, as the robust recipes) on the
#             clean training view for CTC_BUDGET; its best dev-CER checkpoint is $OUT/ctc_init.ckpt
#             (or give CTC_INIT=path to skip this stage, e.g. the carried file of an earlier call)
#   3. rows   ROWS x SEEDS at the same time, each from CTC_INIT with the same encoder updates
#             (STEPS, lr schedule over them) or BUDGET of wall time, whichever comes first; the
#             teacher of `ts` is CTC_INIT; then each best dev-CER checkpoint (far-field dev) is
#             tested on every test set in one `speechlab test` (one model load)
#
#   OUT=/tmp/out STAGES="data ctc" bash recipes/robust/run_gpu.sh                  # call 1
#   OUT=/tmp/out CTC_INIT=ctc_init.ckpt STAGES="data rows" bash recipes/robust/run_gpu.sh  # call 2
#   ... SEEDS=1, SEEDS=2 for the other seeds
# Every seed of a study must start from the same warm start: keep $OUT/ctc_init.ckpt of the ctc
# stage (carried as a git-ignored file) for all its rows calls; a new ctc stage is a new study.
#
# Rows (recipes/tiny/robust_*.yaml, data and schedule swapped): clean (clean view only),
# augment (both views), l1 (paired L1, lambda 3), ts (teacher-student on the paired clean view),
# gan (WGAN-GP critic, lambda_adv 0.01), gan_l1 (both penalties).
# Carried (git-ignored): .whl2/, .gpu/ (scripts/gpu_bundle.sh) and .cache/robust_shared
# (recipes/robust/pack_shared.sh: noise_rir/ and FSDD's test split from ../shared/data).
# Results: $OUT/results.json (per run: steps, wall time, dev CER curve, WER/CER per test set),
# $OUT/ckpt_*.tgz (best checkpoints without optimizer state), $OUT/logs.tgz.
set -uo pipefail
START=$(date +%s)
el() { echo "[$(($(date +%s) - START)) s] $*"; }
OUT=${OUT:-/tmp/robust_out}
STAGES=${STAGES:-"data ctc rows"}
ROWS=${ROWS:-"clean augment l1 ts gan gan_l1"}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-1500}
BUDGET=${BUDGET:-00:00:05:00}
CTC_BUDGET=${CTC_BUDGET:-00:00:04:00}
LR=${LR:-0.001}
UTTS=${UTTS:-10700}
REPO=$PWD
ROOT=${ROOT:-/tmp/robust}
D=$ROOT/data
mkdir -p "$OUT" "$ROOT/runs"
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh espeak || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
sl() { python3 -m speechlab.cli "$@"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has data && [ ! -f "$D/.ready" ]; then
  bash recipes/robust/prepare.sh "$D" "$REPO/.cache/robust_shared" "$UTTS" "$(nproc)" >"$OUT/prepare.log" 2>&1 ||
    { tail -5 "$OUT/prepare.log"; exit 1; }
fi
[ -f "$D/.ready" ] || { echo "run_gpu.sh: no corpus in $D (run the data stage)"; exit 1; }
el "corpus: $(wc -l <"$D/clean/train.jsonl") clean / $(wc -l <"$D/farfield/train.jsonl") far-field train"

ACCEL=${ACCEL:-gpu}  # ACCEL=cpu PRECISION=32: a smoke test of the recipe on a CPU
gpu=(--trainer.accelerator "$ACCEL" --trainer.precision "${PRECISION:-bf16-mixed}")
CTC_RUN=$ROOT/runs/ctc
if has ctc && [ -z "${CTC_INIT:-}" ]; then
  mkdir -p "$CTC_RUN" && (cd "$CTC_RUN" && sl fit --config "$REPO/recipes/tiny/ctc.yaml" "${gpu[@]}" \
    --model.init_args.encoder.rnn_type gru --trainer.max_time "$CTC_BUDGET" --trainer.max_steps 6000 \
    --trainer.check_val_every_n_epoch 1 --data.init_args.num_workers 6 \
    --data.init_args.train_manifest "$D/clean/train.jsonl" --data.init_args.dev_manifest "$D/clean/dev.jsonl" \
    --data.init_args.test_manifest "$D/clean/test.jsonl" >"$OUT/fit_ctc.log" 2>&1)
  grep -E "training ended" "$OUT/fit_ctc.log" | tail -1
  python3 scripts/gpu_results.py strip "$CTC_RUN/exp/tiny_ctc/checkpoints/best.ckpt" "$OUT/ctc_init.ckpt"
  CTC_INIT=$OUT/ctc_init.ckpt
  el "ctc: $CTC_INIT"
fi

if has rows; then
  CTC_INIT=$(readlink -f "${CTC_INIT:?rows need CTC_INIT (or the ctc stage)}")
  data=(--data.init_args.train_manifest "$D/farfield/train.jsonl"
        --data.init_args.paired_clean_manifest "$D/clean/train.jsonl"
        --data.init_args.dev_manifest "$D/farfield/dev/dev.jsonl"
        --data.init_args.test_manifest "$D/test/clean/test.jsonl" --data.init_args.num_workers 2)
  schedule=(--trainer.max_steps "$STEPS" --trainer.max_time "$BUDGET" --trainer.val_check_interval "${VAL_EVERY:-250}"
            --trainer.check_val_every_n_epoch null --model.init_args.total_steps "$STEPS"
            --model.init_args.lr "$LR" --model.init_args.warmup_steps 100
            --model.init_args.init_checkpoint "$CTC_INIT")
  PIDS=(); RUNS=()
  for seed in $SEEDS; do
    for row in $ROWS; do
      extra=(); recipe=$row
      case $row in
        gan_l1) recipe=gan; extra=(--model.init_args.lambda_l1 3.0) ;;
        ts) extra=(--model.init_args.teacher_checkpoint "$CTC_INIT") ;;
      esac
      run=${row}_s$seed; RUNS+=("$run")
      mkdir -p "$ROOT/runs/$run"
      (cd "$ROOT/runs/$run" && sl fit --config "$REPO/recipes/tiny/robust_$recipe.yaml" "${gpu[@]}" \
         "${data[@]}" "${schedule[@]}" "${extra[@]}" --seed_everything "$seed" \
         >"$OUT/fit_$run.log" 2>&1; echo "fit rc=$?" >>"$OUT/fit_$run.log") &
      PIDS+=($!)
    done
  done
  for p in "${PIDS[@]}"; do wait "$p"; done
  el "training done"
  sets="{clean: $D/test/clean/test.jsonl"
  for s in sim_snr20 sim_snr10 sim_snr0 heldout_snr20 heldout_snr10 heldout_snr0 fsdd_clean fsdd_sim_snr10 fsdd_heldout_snr10; do
    sets+=", $s: $(ls "$D"/test/$s/*.jsonl)"
  done
  sets+="}"
  PIDS=()
  for run in "${RUNS[@]}"; do
    ckpt=$(ls "$ROOT"/runs/$run/exp/*/checkpoints/best.ckpt 2>/dev/null | head -1)
    [ -n "$ckpt" ] || { echo "$run: no best.ckpt"; continue; }
    (cd "$ROOT/runs/$run" && sl test --ckpt_path "$ckpt" --trainer.accelerator "$ACCEL" --trainer.logger false \
       --data.init_args.test_manifest "$sets" --data.init_args.resample true --data.init_args.num_workers 2 \
       --model.init_args.output_dir "$ROOT/runs/$run/test" --model.init_args.overwrite true \
       >"$OUT/test_$run.log" 2>&1) &
    PIDS+=($!)
  done
  for p in "${PIDS[@]}"; do wait "$p"; done
  el "tests done"
  python3 - "$ROOT/runs" "$OUT" "${RUNS[@]}" <<'EOF'
import glob, json, os, sys, tarfile
sys.path.insert(0, "scripts")
from gpu_results import fit_summary, strip_checkpoint
runs_dir, out, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
old = json.load(open(f"{out}/results.json")) if os.path.exists(f"{out}/results.json") else {}
for run in runs:
    row = fit_summary(open(f"{out}/fit_{run}.log").read())
    path = f"{runs_dir}/{run}/test/wer.json"
    if os.path.exists(path):
        sets = json.load(open(path))["sets"]
        row["test"] = {name: {"wer": s["test_word"]["rate"], "cer": s["test_char"]["rate"],
                              "utterances": s["utterances"]} for name, s in sets.items()}
    old[run] = row
    print(run, json.dumps({k: v for k, v in row.items() if k != "dev_cer_curve"}))
json.dump(old, open(f"{out}/results.json", "w"), indent=1)
ckdir = f"{runs_dir}/../ckpt"
os.makedirs(ckdir, exist_ok=True)
for i in range(0, len(runs), 3):
    with tarfile.open(f"{out}/ckpt_{runs[i]}.tgz", "w:gz") as tar:
        for run in runs[i:i + 3]:
            for path in glob.glob(f"{runs_dir}/{run}/exp/*/checkpoints/best.ckpt"):
                strip_checkpoint(path, f"{ckdir}/{run}.ckpt")
                tar.add(f"{ckdir}/{run}.ckpt", arcname=f"{run}.ckpt")
EOF
fi
tar czf "$OUT/logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log) 2>/dev/null && rm -f "$OUT"/*.log
el "done"
