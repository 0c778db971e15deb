# Sourced by the GPU recipes (recipes/{domain,synth,20news}/run_gpu.sh), from the repository root:
#   source scripts/gpu_env.sh [espeak] || exit 1
# puts the carried cp312 wheels (.whl2/, from scripts/gpu_bundle.sh) on PYTHONPATH when the
# machine lacks them (the H200 image has torch + Lightning, not lhotse/jiwer/jsonargparse), then
# this checkout; with `espeak`, unpacks .gpu/espeak.tar.gz onto PATH when espeak-ng is missing.
export PYTHONUNBUFFERED=1
if ! python3 -c "import jiwer, lhotse, jsonargparse" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl2/*.whl || { echo "gpu_env: cannot install .whl2/*.whl (run scripts/gpu_bundle.sh and carry .whl2)" >&2; return 1; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
if [ "${1:-}" = espeak ] && ! command -v espeak-ng >/dev/null; then
  tar xzf .gpu/espeak.tar.gz -C /tmp ||
    { echo "gpu_env: cannot unpack .gpu/espeak.tar.gz (run scripts/gpu_bundle.sh and carry .gpu)" >&2; return 1; }
  export PATH=/tmp/espeak/bin:$PATH
fi
