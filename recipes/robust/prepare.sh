#!/usr/bin/env bash
# The paired clean/far-field corpus of the GAN-robust encoder study at GPU scale (issue 15.1),
# deterministic by seed; run where it trains (the H200 machine's 16 cores: ~3 minutes).
#
#   bash recipes/robust/prepare.sh OUT SHARED [UTTERANCES=10700] [JOBS=nproc]
#   TEST_ONLY=1 bash recipes/robust/prepare.sh ...   # the test sets alone (minutes on 2 cores),
#       the very files of a full run (synth --splits test; far-field draws are seeded per utterance)
#
# SHARED holds noise_rir/{noise,rir}/ and fsdd/ (../shared/data, or the carried copy of
# recipes/robust/pack_shared.sh). The recorded noises and impulse responses are split into a
# training half and a held-out half (never in training; the split is fixed below, each held-out
# file has a training file of its kind: kitchen tap / dishes, carnival / restaurant babble,
# traffic hum / city street, two music tracks / one; three measured halls / a seminar room and a
# studio):
#   OUT/clean/{train,dev,test}.jsonl     espeak-ng corpus, many voices (speechlab data synth, seed 2;
#                                        10,700 utterances: 10,058 train / 321 dev / 321 test)
#   OUT/farfield/train.jsonl             one far-field copy of every training utterance (clean_id):
#                                        2/3 simulated rooms (pyroomacoustics, a bank of 400),
#                                        1/3 the training half's real RIRs; noise drawn from white /
#                                        pink / babble and the training half's recordings; SNR 0-20 dB
#   OUT/farfield/dev/dev.jsonl           dev, simulated rooms, SNR 0-20 dB
#   OUT/test/<set>/*.jsonl               clean; sim_snr{20,10,0} (new simulated rooms, generated
#                                        noise); heldout_snr{20,10,0} (held-out recorded noise +
#                                        held-out real RIRs); fsdd_clean, fsdd_sim_snr10,
#                                        fsdd_heldout_snr10 (FSDD's 300 test recordings, real speech)
set -euo pipefail
OUT=${1:?usage: prepare.sh OUT SHARED [UTTERANCES] [JOBS]}
SHARED=${2:?usage: prepare.sh OUT SHARED [UTTERANCES] [JOBS]}
N=${3:-10700}
JOBS=${4:-$(nproc)}
ORDER=${MAX_ORDER:-40}   # image-source order cap (as recipes/robust/prepare_cpu.sh)
PY=${PY:-python3}
sl() { $PY -m speechlab.cli "$@"; }
ff() { sl data farfield --jobs "$JOBS" --max-order "$ORDER" "$@"; }

HALVES=$OUT/noise_rir
TRAIN_NOISE=(speech_commands_doing_the_dishes.wav speech_commands_exercise_bike.wav
             speech_commands_white_noise.wav soundbible_restaurant_ambiance.wav
             freesound_473701_city.mp3 music_kevin_macleod_vibe_ace.ogg)
HELDOUT_NOISE=(speech_commands_running_tap.wav soundbible_crowd_at_carnival.wav
               sse_usc_distant_city_traffic_hum.mp3 music_brahms_hungarian_dance_5.ogg
               music_karissa_hobbs_lets_go_fishin.ogg)
TRAIN_RIR=(clap_seminar_room.wav openair_genesis6_studio_live_room.wav
           audiomentations_rir48000.wav lhotse_real_8ch.wav)
HELDOUT_RIR=(openair_arthur_sykes_rymer_auditorium.wav openair_st_andrews_church.wav
             openair_spokane_womans_club.wav audiomentations_impulse_response_0.wav)
link() {  # link HALF KIND FILES...: $HALVES/HALF/KIND/FILE -> $SHARED/noise_rir/KIND/FILE
  local half=$1 kind=$2; shift 2
  mkdir -p "$HALVES/$half/$kind"
  for f in "$@"; do
    [ -f "$SHARED/noise_rir/$kind/$f" ] || { echo "prepare.sh: $SHARED/noise_rir/$kind/$f is missing" >&2; exit 1; }
    ln -sf "$(readlink -f "$SHARED/noise_rir/$kind/$f")" "$HALVES/$half/$kind/$f"
  done
}
link train noise "${TRAIN_NOISE[@]}"; link train rir "${TRAIN_RIR[@]}"
link heldout noise "${HELDOUT_NOISE[@]}"; link heldout rir "${HELDOUT_RIR[@]}"

rows() {  # rows SRC DST [START:STOP [MORE-SRC...]]: SRC's lines (a slice of them), then MORE-SRC's,
          # written atomically to DST with their audio paths relative to DST's folder
  $PY - "$@" <<'PY'
import json, os, sys
src, dst = sys.argv[1:3]
start, _, stop = (sys.argv[3] if len(sys.argv) > 3 else "").partition(":")
sel = slice(int(start) if start else None, int(stop) if stop else None)
rows = []
for i, path in enumerate([src, *sys.argv[4:]]):
    part = [json.loads(line) for line in open(path) if line.strip()]
    for r in part[sel] if i == 0 else part:
        for key in [k for k in r if k.endswith("audio_filepath")]:  # clean_audio_filepath too
            audio = os.path.join(os.path.dirname(os.path.abspath(path)), r[key])
            r[key] = os.path.relpath(audio, os.path.dirname(os.path.abspath(dst)))
        rows.append(r)
os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
with open(dst + ".part", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
os.replace(dst + ".part", dst)
print(f"{len(rows)} rows -> {dst}")
PY
}

echo "== clean corpus ($N utterances)"
splits=(); [ -n "${TEST_ONLY:-}" ] && splits=(--splits test)
[ -f "$OUT/clean/test.jsonl" ] || sl data synth --out "$OUT/clean" --utterances "$N" --seed 2 \
  --jobs "$JOBS" --dev-fraction 0.03 --test-fraction 0.03 "${splits[@]}"

if [ -z "${TEST_ONLY:-}" ]; then
echo "== far-field training copies"
n_train=$(wc -l <"$OUT/clean/train.jsonl")
cut=$((n_train * 2 / 3))
rows "$OUT/clean/train.jsonl" "$OUT/clean/train_sim.jsonl" ":$cut"
rows "$OUT/clean/train.jsonl" "$OUT/clean/train_real.jsonl" "$cut:"
ff --in "$OUT/clean/train_sim.jsonl" --out "$OUT/farfield/train_sim" --snr-range 0 20 --seed 1 \
   --rooms 400 --noise-dir "$HALVES/train/noise" --noise-type white pink babble
ff --in "$OUT/clean/train_real.jsonl" --out "$OUT/farfield/train_real" --snr-range 0 20 --seed 1 \
   --rir-dir "$HALVES/train/rir" --noise-dir "$HALVES/train/noise" --noise-type white pink babble
rows "$OUT/farfield/train_sim/train_sim.jsonl" "$OUT/farfield/train.jsonl" "" "$OUT/farfield/train_real/train_real.jsonl"
echo "$(wc -l <"$OUT/farfield/train.jsonl") far-field training utterances"
ff --in "$OUT/clean/dev.jsonl" --out "$OUT/farfield/dev" --snr-range 0 20 --seed 1 --rooms 100
fi

echo "== test sets"
T=$OUT/test
rows "$OUT/clean/test.jsonl" "$T/clean/test.jsonl"
for snr in 20 10 0; do
  ff --in "$T/clean/test.jsonl" --out "$T/sim_snr$snr" --snr "$snr" --seed 100 --rooms 100
  ff --in "$T/clean/test.jsonl" --out "$T/heldout_snr$snr" --snr "$snr" --seed 100 \
     --noise-dir "$HALVES/heldout/noise" --rir-dir "$HALVES/heldout/rir"
done
$PY - "$SHARED/fsdd/manifest.jsonl" "$T/fsdd_clean/test.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1:]
os.makedirs(os.path.dirname(dst), exist_ok=True)
out = []
for line in open(src):
    r = json.loads(line)
    if r.get("split") != "test":
        continue
    path = os.path.join(os.path.dirname(os.path.abspath(src)), r["audio_filepath"])
    r["id"] = "fsdd_" + os.path.splitext(os.path.basename(path))[0]
    r["audio_filepath"] = os.path.relpath(path, os.path.dirname(os.path.abspath(dst)))
    out.append(r)
open(dst, "w").writelines(json.dumps(r) + "\n" for r in out)
print(f"{len(out)} FSDD test utterances -> {dst}")
PY
ff --in "$T/fsdd_clean/test.jsonl" --out "$T/fsdd_sim_snr10" --snr 10 --seed 100 --rooms 100
ff --in "$T/fsdd_clean/test.jsonl" --out "$T/fsdd_heldout_snr10" --snr 10 --seed 100 \
   --noise-dir "$HALVES/heldout/noise" --rir-dir "$HALVES/heldout/rir"
[ -n "${TEST_ONLY:-}" ] || touch "$OUT/.ready"
echo "== done: $(ls "$T" | tr '\n' ' ')"
