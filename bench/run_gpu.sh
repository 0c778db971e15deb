#!/usr/bin/env bash
# Build the CUDA Gram-CTC kernel, run its tests and the benchmark on a GPU machine.
#   OUT=/some/dir bash bench/run_gpu.sh        (logs and tables go to $OUT, default ./gpu_out)
# Writes build.log, tests.log, bench_gpu.{md,json}, profile.txt.
# Optional: wheels in .whl/ (e.g. pytest) are installed to /tmp/site when pytest is missing;
# with .whl2/ carried (scripts/gpu_bundle.sh) its wheels too (flashlight-text for the decoding
# bench's flashlight row, lhotse, jiwer, ...).
set -u -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} SPEECHLAB_BUILD_CUDA=1
export MAX_JOBS=${MAX_JOBS:-8}
if ! python3 -c "import pytest" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .whl2 ]; then
  # shellcheck source=scripts/gpu_env.sh
  source scripts/gpu_env.sh || exit 1
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"

t0=$(date +%s)
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -c "from speechlab import ops; print(ops.available_backends())"

python3 -m pytest -q -p no:cacheprovider -m "cuda or not slow" tests/functional/test_gram_ctc_cuda.py \
  tests/functional/test_gram_ctc.py tests/data/test_gram_set.py > "$OUT/tests.log" 2>&1
echo "tests rc=$?"; tail -15 "$OUT/tests.log"
python3 -m pytest -q -p no:cacheprovider -m "slow and cuda" tests/functional/test_gram_ctc_cuda.py \
  >> "$OUT/tests.log" 2>&1
echo "slow cuda tests rc=$?"; tail -3 "$OUT/tests.log"

python3 bench/gram_ctc.py --device cuda --no-reference --out "$OUT/bench_gpu" 2> /dev/null
echo "bench rc=$?"
python3 bench/gram_ctc.py --device cuda --profile > "$OUT/profile.txt" 2>&1
echo "profile rc=$?"

# issue 18: the batched prefix beam search and the tensor n-gram LM on the GPU (CUDA tests:
# equal to the CPU; no host sync in the frame step), then its speed table
python3 -m pytest -q -p no:cacheprovider tests/decode/test_batched_prefix_beam.py \
  tests/data/test_tensor_ngram.py > "$OUT/decode_tests.log" 2>&1
echo "batched decode tests rc=$?"; tail -5 "$OUT/decode_tests.log"
python3 bench/batched_decode.py --device cuda > "$OUT/batched_decode.md" 2>&1
echo "batched decode bench rc=$?"; cat "$OUT/batched_decode.md"
