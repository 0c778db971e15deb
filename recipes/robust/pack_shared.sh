#!/usr/bin/env bash
# What recipes/robust/run_gpu.sh carries to the GPU machine from ../shared/data (git-ignored,
# ~20 MB): .cache/robust_shared/noise_rir/ (the recorded noises and impulse responses) and
# .cache/robust_shared/fsdd/ (FSDD's 300 test recordings and their manifest rows).
#   bash recipes/robust/pack_shared.sh [SHARED=../shared/data]
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${1:-../shared/data}
DST=.cache/robust_shared
[ -d "$SHARED/noise_rir" ] && [ -f "$SHARED/fsdd/manifest.jsonl" ] ||
  { echo "pack_shared.sh: $SHARED has no noise_rir/ or fsdd/manifest.jsonl" >&2; exit 1; }
rm -rf "$DST" && mkdir -p "$DST/fsdd"
cp -r "$SHARED/noise_rir" "$DST/"
python3 - "$SHARED/fsdd" "$DST/fsdd" <<'PY'
import json, os, shutil, sys
src, dst = sys.argv[1:]
rows = [json.loads(line) for line in open(f"{src}/manifest.jsonl") if line.strip()]
test = [r for r in rows if r.get("split") == "test"]
for r in test:
    os.makedirs(os.path.dirname(f"{dst}/{r['audio_filepath']}"), exist_ok=True)
    shutil.copy(f"{src}/{r['audio_filepath']}", f"{dst}/{r['audio_filepath']}")
open(f"{dst}/manifest.jsonl", "w").writelines(json.dumps(r) + "\n" for r in test)
print(f"{len(test)} FSDD test recordings")
PY
echo "pack_shared.sh: $DST $(du -sh "$DST" | cut -f1)"
