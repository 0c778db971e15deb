#!/usr/bin/env bash
# Build the git-ignored files that the GPU recipes carry to the device machine (Python 3.12,
# torch + Lightning, no network, no lhotse/soundfile/jiwer/jsonargparse, no espeak-ng):
#   .whl2/               cp312 wheels of what that image lacks (pip download, no install here;
#                        pyroomacoustics for the far-field rooms of recipes/robust/;
#                        flashlight-text for bench/batched_decode.py's flashlight row)
#   .gpu/espeak.tar.gz   espeak-ng + the shared libraries it loads (not glibc) + its English data,
#                        with the wrapper espeak/bin/espeak-ng (sets LD_LIBRARY_PATH and
#                        ESPEAK_DATA_PATH); unpack with `tar xzf .gpu/espeak.tar.gz -C /tmp`
# Used by recipes/{fsdd,domain,synth,20news,robust}/run_gpu.sh.
#   bash scripts/gpu_bundle.sh          # here (needs espeak-ng: scripts/system_deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=(lhotse==1.33.0 lilcom intervaltree sortedcontainers cytoolz toolz audioread tabulate
        "jsonargparse==4.53.0" docstring-parser typeshed-client soundfile cffi pycparser
        jiwer==4.0.0 rapidfuzz==3.14.6 pyroomacoustics==0.10.1 flashlight-text==0.0.7)
if ! ls .whl2/lhotse-*.whl .whl2/pyroomacoustics-*.whl .whl2/flashlight_text-*.whl >/dev/null 2>&1; then
  mkdir -p .whl2
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl2 "${WHEELS[@]}"
fi
echo "speechlab: .whl2/: $(ls .whl2 | wc -l) wheels, $(du -sh .whl2 | cut -f1)"

if [ ! -f .gpu/espeak.tar.gz ]; then
  bin=$(command -v espeak-ng) || { echo "speechlab: espeak-ng is missing: run scripts/system_deps.sh" >&2; exit 1; }
  data=$(espeak-ng --version | sed -n 's/.*Data at: *//p')
  [ -d "$data" ] || { echo "speechlab: espeak-ng's data folder '$data' is missing" >&2; exit 1; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/espeak/bin" "$tmp/espeak/lib" "$tmp/espeak/espeak-ng-data"
  cp "$(readlink -f "$bin")" "$tmp/espeak/bin/espeak-ng.bin"
  # every library it loads but the C library and the loader, which the target has
  ldd "$bin" | awk '/=> \//{print $3}' | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" "$tmp/espeak/lib/"; done
  # the English dictionary and every language-independent file (voices, phoneme tables)
  (cd "$data" && find . -maxdepth 1 -name '*_dict' ! -name en_dict -printf '%P\n') >"$tmp/skip"
  tar cf - -C "$data" --exclude-from="$tmp/skip" . | tar xf - -C "$tmp/espeak/espeak-ng-data"
  cat >"$tmp/espeak/bin/espeak-ng" <<'EOF'
#!/usr/bin/env bash
here=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ESPEAK_DATA_PATH="$here"   # it reads $ESPEAK_DATA_PATH/espeak-ng-data
exec "$here/bin/espeak-ng.bin" "$@"
EOF
  chmod +x "$tmp/espeak/bin/espeak-ng"
  mkdir -p .gpu && tar czf .gpu/espeak.tar.gz -C "$tmp" espeak
fi
echo "speechlab: .gpu/espeak.tar.gz: $(du -sh .gpu/espeak.tar.gz | cut -f1)"
