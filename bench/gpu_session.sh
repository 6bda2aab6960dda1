#!/usr/bin/env bash
# Everything a GPU host should check, in one call (a lent GPU is held for minutes, not hours):
#   bench/gpu_session.sh [OUTDIR] [STAGES]      STAGES: comma list of build,test,sanitize,bench
#                                               (default all four, in that order)
# build:    the core with CUDA (DETKERNELS_CUDA=1) in place, for this GPU's architecture only.
# test:     the suite but its `slow` tests (CPU-only model/export/AOTInductor checks that CI runs;
#           minutes of a lent GPU's time for nothing new); the CUDA, numba.cuda and CuPy tests
#           run instead of skipping.
# sanitize: compute-sanitizer memcheck + racecheck over the CUDA tests at small sizes.
# bench:    `python -m detkernels.bench --quick` against torchvision, written to
#           OUTDIR/gpu-<device>-quick (copy it to bench/results/ and commit it).
# Logs go to OUTDIR/*.log; a summary table is printed last. Uses the host's python3, which must
# already have torch (+ torchvision, numba, cupy for their rows), pybind11 and cmake: no installs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/detkernels-gpu}}
stages=${2:-build,test,sanitize,bench}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
summary=()

step() {  # step NAME CMD...: run, log to $out/NAME.log, record the exit status and time.
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$out/$name.log"
  summary+=("$(printf '%-10s rc=%-3s %5ss' "$name" "$rc" $((SECONDS - t0)))")
  return $rc
}

has() { [[ ",$stages," == *",$1,"* ]]; }

arch=$($py - <<'EOF' 2>/dev/null
import torch
p = torch.cuda.get_device_properties(0)
print(f"{p.major}{p.minor}-real")
EOF
) || arch=""
dev=$($py -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null || echo cpu)
tag=$(echo "$dev" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
{ echo "device: $dev (arch ${arch:-none})"; nvidia-smi 2>/dev/null | head -15; $py -c \
  "import torch, sys; print(sys.version); print('torch', torch.__version__, torch.version.cuda)"; } \
  >"$out/env.log" 2>&1
cat "$out/env.log"

if has build; then
  # One architecture: a fraction of the default build's time.
  step build env DETKERNELS_CUDA=1 ${arch:+DETKERNELS_CUDA_ARCHITECTURES=$arch} \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $py setup.py -q build_ext --inplace || {
    printf '%s\n' "${summary[@]}"; exit 1; }
  $py -c "import detkernels; print(detkernels.build_info())" >>"$out/build.log" 2>&1
fi
if has test; then
  step test $py -m pytest tests -q -p no:cacheprovider --durations=15 -m "not slow"
fi
if has sanitize && command -v compute-sanitizer >/dev/null; then
  # The CUDA tests only (small sizes); a leak or race fails the step.
  for tool in memcheck racecheck; do
    step "san-$tool" compute-sanitizer --tool "$tool" --error-exitcode 9 --target-processes all \
      $py -m pytest tests -q -p no:cacheprovider -x -k "cuda and not cudasim and not slow" \
      -m "not slow"
  done
fi
if has bench; then
  step bench $py -m detkernels.bench --quick --out "$out/gpu-$tag-quick"
fi
echo "== summary ($dev)"
printf '%s\n' "${summary[@]}"
