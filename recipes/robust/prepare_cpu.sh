#!/usr/bin/env bash
# Data for the GAN-robust encoder study on the 2-core CPU (docs/robust_encoder.md; recipes/robust/run.sh
# trains and evaluates on it; recipes/robust/prepare.sh makes the GPU study's larger corpus):
#   OUT/clean/{train,dev,test}.jsonl      espeak-ng corpus (speechlab data synth)
#   OUT/farfield/{train,dev}/*.jsonl      training/dev far-field copies with clean_id: simulated
#                                         rooms + generated noise (white/pink/babble), SNR 0-20 dB
#   OUT/test/<set>/*.jsonl                test sets (never seen in training):
#     sim_snr{20,10,5,0}                  simulated rooms + generated noise at a fixed SNR
#     sim_small_snr10, sim_large_snr10    small/dry vs large/reverberant simulated rooms, 10 dB
#     real_snr{20,10,5,0}                 real noise recordings + real impulse responses
#                                         (../shared/data/noise_rir), fixed SNR
#     fsdd_clean, fsdd_sim_snr10,         real human speech: the FSDD test split (300 spoken
#     fsdd_real_snr10                     digits, 8 kHz), clean and corrupted the same ways
# usage: recipes/robust/prepare_cpu.sh [OUT=data/robust] [UTTERANCES=1200] [SHARED=../shared/data]
set -euo pipefail
OUT=${1:-data/robust}
N=${2:-1200}
SHARED=${3:-../shared/data}
JOBS=${JOBS:-2}
ORDER=${MAX_ORDER:-40}   # image-source order cap: 40 keeps ~0.8 s of tail (RT60 <= 0.8 s) at ~40x less time than 80
NOISE="$SHARED/noise_rir/noise"
RIR="$SHARED/noise_rir/rir"
ff() { speechlab data farfield --jobs "$JOBS" --max-order "$ORDER" "$@"; }

echo "== clean corpus ($N utterances)"
speechlab data synth --out "$OUT/clean" --utterances "$N" --seed 0 --jobs "$JOBS" \
  --dev-fraction 0.08 --test-fraction 0.15

echo "== far-field training and dev copies (simulated rooms, generated noise, SNR 0-20 dB)"
ff --in "$OUT/clean/train.jsonl" --out "$OUT/farfield/train" --snr-range 0 20 --seed 1
ff --in "$OUT/clean/dev.jsonl" --out "$OUT/farfield/dev" --snr-range 0 20 --seed 1

echo "== test sets"
T="$OUT/test"
mkdir -p "$T/clean"
# the same utterances, paths relative to the new folder
python - "$OUT/clean/test.jsonl" "$T/clean/test.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
rows = [json.loads(l) for l in open(src) if l.strip()]
for r in rows:
    r["audio_filepath"] = os.path.relpath(os.path.join(os.path.dirname(src), r["audio_filepath"]), os.path.dirname(dst))
open(dst, "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
for snr in 20 10 5 0; do
  ff --in "$OUT/clean/test.jsonl" --out "$T/sim_snr$snr" --snr "$snr" --seed 100
  ff --in "$OUT/clean/test.jsonl" --out "$T/real_snr$snr" --snr "$snr" --seed 100 \
     --noise-dir "$NOISE" --rir-dir "$RIR"
done
ff --in "$OUT/clean/test.jsonl" --out "$T/sim_small_snr10" --snr 10 --seed 100 \
   --room-min 3 3 2.4 --room-max 4.5 4 3 --rt60-range 0.2 0.35 --distance-range 0.5 1.5
ff --in "$OUT/clean/test.jsonl" --out "$T/sim_large_snr10" --snr 10 --seed 100 \
   --room-min 9 7 3.5 --room-max 14 11 5 --rt60-range 0.7 0.9 --distance-range 3 5

echo "== FSDD test split (real speech, 8 kHz)"
mkdir -p "$T/fsdd_clean"
python - "$SHARED/fsdd/manifest.jsonl" "$T/fsdd_clean/test.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
rows = [json.loads(l) for l in open(src) if l.strip()]
out = []
for r in rows:
    if r.get("split") != "test":
        continue
    path = os.path.join(os.path.dirname(src), r["audio_filepath"])
    r["id"] = "fsdd_" + os.path.splitext(os.path.basename(path))[0]
    r["audio_filepath"] = os.path.relpath(path, os.path.dirname(dst))
    out.append(r)
open(dst, "w").write("".join(json.dumps(r) + "\n" for r in out))
print(f"{len(out)} FSDD test utterances -> {dst}")
PY
ff --in "$T/fsdd_clean/test.jsonl" --out "$T/fsdd_sim_snr10" --snr 10 --seed 100
ff --in "$T/fsdd_clean/test.jsonl" --out "$T/fsdd_real_snr10" --snr 10 --seed 100 \
   --noise-dir "$NOISE" --rir-dir "$RIR"
echo "== done: $(ls "$T" | tr '\n' ' ')"
