#!/usr/bin/env bash
# The GPU check in one command, on a bare GPU machine (docs/gpu.md):
#   bash scripts/gpu_check.sh                  # install what is missing, run the gpu tests, measure
#   bash scripts/gpu_check.sh --update-docs    # ... and write the results into docs/gpu.md
#   bash scripts/gpu_check.sh --dry-run        # print what it would install and run; change nothing
#   bash scripts/gpu_check.sh --no-install     # use the environment as it is
#   bash scripts/gpu_check.sh --no-bench       # the tests only
#
# It reads the driver's CUDA version from nvidia-smi and installs the newest PyTorch CUDA build
# that driver runs (torch==$GPU_CHECK_TORCH), then the project with its dev extras, then
# DeepSpeed; each step is skipped when what it installs already imports (and torch already
# sees the GPU). Then `pytest -m gpu` (cheap tests first, a limit per test and one for all of
# them), the summary table, and scripts/bench/bench_gpu.py. Meant to finish within 10 minutes.
#
# Environment:
#   SLIMLAB_WHEELHOUSE=<dir>     install offline from this folder of wheels (pip --no-index
#                                --find-links <dir>); docs/gpu.md says how to fill it
#   GPU_CHECK_OUT=<dir>          junit.xml, env.json, summary.md, bench results (logs/gpu_check)
#   GPU_CHECK_TORCH=<version>    the torch version to install (2.13.0, as CI)
#   GPU_CHECK_TORCH_INDEX=<url>  a PyTorch wheel index to use instead of the one the driver picks
#   GPU_CHECK_CUDA_VERSION=<x.y> the driver's CUDA version, instead of asking nvidia-smi
#   GPU_CHECK_TEST_TIMEOUT=<s>   limit per test (240); GPU_CHECK_TESTS_BUDGET=<s>: all tests (360)
#   PYTHON=<interpreter>         the Python to install into and run (python)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-logs/gpu_check}
TORCH_VERSION=${GPU_CHECK_TORCH:-2.13.0}
DEEPSPEED_VERSION=0.19.8 # the version .ci/run installs
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-240}
TESTS_BUDGET=${GPU_CHECK_TESTS_BUDGET:-360}
WHEELHOUSE=${SLIMLAB_WHEELHOUSE:-}
# cheap tests first: a run cut short by the budget still reports the basics
TESTS=(
  tests/gpu/test_gpu_precision.py
  tests/gpu/test_gpu_bitsandbytes.py
  tests/gpu/test_gpu_compression.py
  tests/gpu/test_gpu_strategies.py
  tests/gpu/test_gpu_export_serve.py
  tests/gpu/test_gpu_sharded_compression.py
)
# the CUDA versions PyTorch publishes builds for (download.pytorch.org/whl/cuXYZ), newest first
CUDA_BUILDS=(13.0 12.9 12.8 12.6 12.4 12.1 11.8)

DRY_RUN=0 INSTALL=1 BENCH=1 UPDATE_DOCS=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --no-install) INSTALL=0 ;;
    --no-bench) BENCH=0 ;;
    --update-docs) UPDATE_DOCS=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu_check.sh: unknown option '$arg': give --dry-run, --no-install, --no-bench or" \
        "--update-docs" >&2
      exit 2
      ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }
die() {
  echo "gpu_check.sh: $*" >&2
  exit 1
}
run() { # print a command, then run it unless --dry-run
  printf '+ %s\n' "$*"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}
imports() { "$PYTHON" -c "$1" >/dev/null 2>&1; }
TORCH_SEES_GPU="import sys, torch; sys.exit(not torch.cuda.is_available())"

version_le() { # x.y <= x.y
  local a_major=${1%%.*} a_minor=${1#*.} b_major=${2%%.*} b_minor=${2#*.}
  ((a_major < b_major || (a_major == b_major && a_minor <= b_minor)))
}

driver_cuda() { # the CUDA version the driver runs, as nvidia-smi's header states it
  if [[ -n ${GPU_CHECK_CUDA_VERSION:-} ]]; then
    echo "$GPU_CHECK_CUDA_VERSION"
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
  fi
}

# -- the machine ---------------------------------------------------------------------------
say "the GPU"
CUDA=$(driver_cuda)
if [[ -z $CUDA ]]; then
  command -v nvidia-smi >/dev/null ||
    die "nvidia-smi not found: this machine has no NVIDIA driver, and the GPU check needs one"
  die "nvidia-smi did not state a CUDA version; give it as GPU_CHECK_CUDA_VERSION=<x.y>"
fi
if command -v nvidia-smi >/dev/null && [[ $DRY_RUN == 0 ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
BUILDS=()
for build in "${CUDA_BUILDS[@]}"; do
  if version_le "$build" "$CUDA"; then BUILDS+=("cu${build/./}"); fi
done
if [[ ${#BUILDS[@]} == 0 ]]; then
  die "the driver runs CUDA $CUDA, older than every PyTorch CUDA build (${CUDA_BUILDS[-1]}" \
    "and newer): update the NVIDIA driver"
fi
echo "driver CUDA $CUDA: torch==$TORCH_VERSION builds to try, in order: ${BUILDS[*]}"
if [[ -n $WHEELHOUSE ]]; then
  [[ -d $WHEELHOUSE || $DRY_RUN == 1 ]] || die "SLIMLAB_WHEELHOUSE=$WHEELHOUSE is not a folder"
  echo "installing offline from $WHEELHOUSE"
  PIP_SOURCE=(--no-index --find-links "$WHEELHOUSE")
else
  PIP_SOURCE=()
fi

# -- installs, each skipped when what it installs already imports ---------------------------
install_torch() {
  if imports "$TORCH_SEES_GPU"; then
    echo "torch sees the GPU: kept"
    return
  fi
  if imports "import torch"; then # a CPU build, or one this driver cannot run
    run "$PYTHON" -m pip uninstall --yes torch
  fi
  local tag
  for tag in "${BUILDS[@]}"; do
    if [[ -n $WHEELHOUSE ]]; then
      run "$PYTHON" -m pip install "${PIP_SOURCE[@]}" "torch==$TORCH_VERSION+$tag" && return
    else
      local index=${GPU_CHECK_TORCH_INDEX:-https://download.pytorch.org/whl/$tag}
      run "$PYTHON" -m pip install "torch==$TORCH_VERSION" --index-url "$index" && return
      [[ -z ${GPU_CHECK_TORCH_INDEX:-} ]] || break
    fi
    echo "no torch==$TORCH_VERSION build for $tag: trying the next one"
  done
  if [[ -n $WHEELHOUSE ]]; then # a wheel without a +cuXYZ tag (PyPI's own CUDA build)
    run "$PYTHON" -m pip install "${PIP_SOURCE[@]}" "torch==$TORCH_VERSION" && return
  fi
  die "could not install a CUDA build of torch==$TORCH_VERSION for driver CUDA $CUDA"
}

install_project() {
  local here
  here=$(pwd -P)
  if imports "import sys, os, slimlab, lightning, hydra, pytest, pytest_timeout, bitsandbytes
sys.exit(not os.path.realpath(slimlab.__file__).startswith('$here/'))"; then
    echo "slimlab (this checkout) and its dev extras import: kept"
    return
  fi
  run "$PYTHON" -m pip install "${PIP_SOURCE[@]}" -e ".[dev]"
}

install_deepspeed() {
  if imports "import deepspeed"; then
    echo "deepspeed imports: kept"
    return
  fi
  # built against the torch above (an isolated build would fetch another torch)
  run "$PYTHON" -m pip install "${PIP_SOURCE[@]}" --no-build-isolation \
    "deepspeed==$DEEPSPEED_VERSION" ||
    echo "DeepSpeed did not install: its tests will skip, saying so" >&2
}

if [[ $INSTALL == 1 ]]; then
  say "installs"
  install_torch
  install_project
  install_deepspeed
fi
if [[ $DRY_RUN == 0 ]] && ! imports "$TORCH_SEES_GPU"; then
  die "torch does not see the GPU (torch.cuda.is_available() is False): check the driver" \
    "against torch's CUDA build ($("$PYTHON" -c 'import torch; print(torch.version.cuda)' \
    2>/dev/null || echo 'torch missing'))"
fi

# -- tests, summary, measurements -------------------------------------------------------------
DOCS=()
if [[ $UPDATE_DOCS == 1 ]]; then DOCS=(--update-docs); fi
run mkdir -p "$OUT"
say "environment"
run "$PYTHON" scripts/gpu_summary.py env "$OUT/env.json"

say "gpu tests: ${TEST_TIMEOUT} s a test, ${TESTS_BUDGET} s in all"
tests_rc=0
# SIGINT at the budget: pytest stops, and still writes the junit file of what ran
run timeout --signal=INT --kill-after=30 "$TESTS_BUDGET" \
  "$PYTHON" -m pytest -m gpu -p no:cacheprovider -q -rfEs --timeout="$TEST_TIMEOUT" \
  --junitxml="$OUT/junit.xml" "${TESTS[@]}" || tests_rc=$?

say "summary"
run "$PYTHON" scripts/gpu_summary.py table "$OUT/junit.xml" --env "$OUT/env.json" \
  --markdown "$OUT/summary.md" ${DOCS[@]+"${DOCS[@]}"} || { [[ $tests_rc != 0 ]] || tests_rc=1; }

bench_rc=0
if [[ $BENCH == 1 ]]; then
  say "measurements"
  run "$PYTHON" scripts/bench/bench_gpu.py --out "$OUT" ${DOCS[@]+"${DOCS[@]}"} || bench_rc=$?
fi

say "done: tests exit $tests_rc, measurements exit $bench_rc; results in $OUT/"
if [[ $tests_rc != 0 ]]; then exit "$tests_rc"; fi
exit "$bench_rc"
