#!/usr/bin/env bash
# GPU check: does bnlab train, predict and export on CUDA, and how fast is it there?
#
#   scripts/gpu_check.sh                      # from anywhere inside a checkout
#   GPU_CHECK_OUT=/some/dir scripts/gpu_check.sh
#   GPU_CHECK_QUICK=1 scripts/gpu_check.sh    # bench with --quick (short, noisier numbers)
#
# Needs: Linux with an NVIDIA GPU and its driver (nvidia-smi works), Python 3.11 (python3, or
# PY=...), make, and either network access to PyPI for the first `make venv` or an existing
# .venv whose torch is a CUDA build. `make venv` installs TORCH_SPEC (default torch==2.13.0;
# PyPI's Linux x86-64 wheel is a CUDA build); for another CUDA line, e.g.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128 TORCH_SPEC=torch==2.13.0+cu128 \
#       scripts/gpu_check.sh
# A .venv that already holds a CPU-only torch is reported as such: remove it (rm -rf .venv) or
# reinstall torch into it, then run this again. No PostgreSQL, Redis or browser is needed.
#
# Steps, each timed and reported in the summary at the end; the script goes on after a failed
# step where the next one can still run, and exits 1 if any step failed:
#   1. venv      make venv
#   2. cuda      torch.cuda.is_available(), the GPU's name, a matmul on it
#   3. tests     the CUDA test subset (listed in CUDA_TESTS below), pytest -k "cuda or
#                select_device"; on a GPU machine a skipped test there is a failure
#   4. bench     python -m bench --device cuda --only training,cnn (the MLP training bench and
#                the CNN bench), rows also written to $GPU_CHECK_OUT/bench.json; a module that
#                fails fails the step, a missed target does not (targets are reported)
# Logs go to $GPU_CHECK_OUT (default: a new directory under /tmp). An estimated 4-6 minutes
# on an H200 once the venv exists (not yet measured there); the tests step is capped at 10
# minutes and each bench module at 200 s (GPU_CHECK_BENCH_TIMEOUT), so it stays near ~8.

# shellcheck disable=SC2317  # the functions below run through `step NAME FUNCTION`
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PYTHON="$REPO/.venv/bin/python"
OUT_DIR=${GPU_CHECK_OUT:-$(mktemp -d /tmp/bnlab-gpu-check.XXXXXX)}
mkdir -p "$OUT_DIR"

# Tests that run on `device: cuda`: tests/models/test_cuda.py (dense and conv stacks, predict
# and export on CUDA) and tests/worker/test_cuda_job.py (a worker job with device cuda), which
# skip without CUDA; and, picked by the -k expression in the other files, select_device on a GPU
# machine, the CNN bench on CUDA, and the worker's readable failure for a device that does not
# exist ("cuda:7": assumes fewer than 8 GPUs).
CUDA_TESTS=(
    tests/models/test_cuda.py
    tests/worker/test_cuda_job.py
    tests/models/test_network.py
    tests/bench/test_cnn.py
    tests/worker/test_training_run.py
)
CUDA_K="cuda or select_device"
BENCH_MODULES="training,cnn"
BENCH_TIMEOUT_S=${GPU_CHECK_BENCH_TIMEOUT:-200}  # per bench module
TESTS_TIMEOUT_S=600

declare -a SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...: run it, log it, record PASS/FAIL and its seconds
    local name=$1 start rc
    shift
    echo
    echo "=== $name: $*"
    start=$(date +%s)
    set +e
    "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    local secs=$(( $(date +%s) - start ))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("PASS  $name (${secs} s)")
    else
        SUMMARY+=("FAIL  $name (exit $rc, ${secs} s; log: $OUT_DIR/$name.log)")
        FAILED=1
    fi
    return "$rc"
}

summary() {
    echo
    echo "=== summary (logs in $OUT_DIR)"
    local line
    for line in "${SUMMARY[@]}"; do
        echo "  $line"
    done
    if [ "$FAILED" -ne 0 ]; then
        echo "GPU check FAILED"
    else
        echo "GPU check passed"
    fi
}
trap summary EXIT

check_cuda() {
    "$PYTHON" - <<'EOF'
import sys

import torch

print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
if torch.version.cuda is None:
    sys.exit("this venv's torch is a CPU-only build: remove .venv (or reinstall torch with "
             "CUDA) and run scripts/gpu_check.sh again")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False: no NVIDIA GPU or driver is visible "
             "(check nvidia-smi and CUDA_VISIBLE_DEVICES)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, "
          f"compute capability {p.major}.{p.minor}")
x = torch.randn(1024, 1024, device="cuda")
err = ((x @ x).cpu() - x.cpu() @ x.cpu()).abs().max().item()
torch.cuda.synchronize()
print(f"matmul on cuda:0 ok (max abs diff vs CPU {err:.2e})")
EOF
}

run_cuda_tests() {
    local missing=0 f
    for f in "${CUDA_TESTS[@]}"; do
        if [ ! -f "$f" ]; then
            echo "missing test file: $f"
            missing=1
        fi
    done
    local present=()
    for f in "${CUDA_TESTS[@]}"; do
        if [ -f "$f" ]; then
            present+=("$f")
        fi
    done
    if [ "${#present[@]}" -eq 0 ]; then
        return 1
    fi
    local rc=0
    set +e
    timeout "$TESTS_TIMEOUT_S" "$REPO/.venv/bin/pytest" -q -p no:cacheprovider -rs \
        --timeout=300 -k "$CUDA_K" --junitxml="$OUT_DIR/cuda-tests.xml" "${present[@]}"
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        return "$rc"
    fi
    # with a GPU present nothing here may skip: a skip means a CUDA path went untested
    "$PYTHON" - "$OUT_DIR/cuda-tests.xml" <<'EOF' || return 1
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
tests = sum(int(s.get("tests", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(f"{tests} CUDA tests ran, {skipped} skipped")
if tests == 0 or skipped:
    sys.exit("CUDA tests skipped or none ran on a machine with a GPU")
EOF
    if [ "$missing" -ne 0 ]; then
        echo "the CUDA test subset is incomplete (see the missing file above)"
        return 1
    fi
}

run_bench() {
    local quick=()
    if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
        quick=(--quick)
    fi
    PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-200} "$PYTHON" -m bench --device cuda \
        --only "$BENCH_MODULES" "${quick[@]}" --timeout "$BENCH_TIMEOUT_S" \
        --json "$OUT_DIR/bench.json"
}

echo "bnlab GPU check in $REPO; logs in $OUT_DIR"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L || echo "nvidia-smi not found"

step venv make venv || exit 1
step cuda check_cuda || exit 1
step tests run_cuda_tests || true
step bench run_bench || true
exit "$FAILED"
