#!/usr/bin/env bash
# Issue 6 on the lent GPU machine, in one call of at most 10 minutes (see docs/gpu.md):
#   1. if .whl/mamba_ssm-*.tar.gz was carried: build mamba-ssm for this GPU's arch only, in the
#      background (no network there: MAMBA_FORCE_BUILD skips its wheel download), time-limited;
#   2. meanwhile the Triton kernel's tests on the GPU (correctness only, so the build's CPU load
#      does not matter);
#   3. wait for the build, then benchmarks/gpu_bench.py with whatever time is left.
# Everything lands in $OUT: gpu_results.md / .json, pytest.log, mamba_build.log, bench.log.
#
# Device call:  bash benchmarks/gpu_run.sh        (carry [".whl"] when the mamba-ssm sdist is there)
# Knobs: CMDD_GPU_TOTAL (570 s), CMDD_MAMBA_BUILD_S (300 s), CMDD_SKIP_TESTS=1, CMDD_SKIP_MAMBA=1,
#        CMDD_BENCH_ONLY=scan,model,... (gpu_bench.py --only; default all sections).
set -u
START=$(date +%s)
TOTAL=${CMDD_GPU_TOTAL:-570}          # seconds for the whole script (the call's limit is 600)
BUILD_LIMIT=${CMDD_MAMBA_BUILD_S:-300}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # no install: the model and bench need torch + numpy only
PY=${PYTHON:-python3}
elapsed() { echo $(( $(date +%s) - START )); }

{
  echo "== $(date -u) on $(hostname)"
  nvidia-smi || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" || true
  nvcc --version 2>/dev/null | tail -2 || true
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

# ---- 1. mamba-ssm from a carried source distribution (background) ------------------------------
BUILD_PID=""
SDIST=$(ls .whl/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
[ "${CMDD_SKIP_MAMBA:-0}" = 1 ] && SDIST=""
if [ -n "$SDIST" ]; then
  set -m   # the build gets its own process group, so leftover nvcc jobs can be ended after a time-out
  (
    set -x
    rm -rf /tmp/mamba_src && mkdir -p /tmp/mamba_src && tar xzf "$SDIST" -C /tmp/mamba_src || exit 1
    cd /tmp/mamba_src/mamba_ssm-* || exit 1
    ARCH=$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')")
    ARCH_DOT=$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}.{b}')")
    [ -n "$ARCH" ] || { echo "BUILD FAILED: torch sees no CUDA device"; exit 1; }
    # Build for this GPU only: keep the -gencode pairs of sm_$ARCH (the sdist lists sm_75 ... sm_121).
    $PY - "$ARCH" <<'EOF' || exit 1
import re, sys
arch = sys.argv[1]
src = open("setup.py").read()
m = re.search(r"^([ \t]*)ext_modules\.append\(", src, re.M)
if not m:
    sys.exit("setup.py: no ext_modules.append( to patch")
ind = m.group(1)
patch = "\n".join(ind + l for l in [
    "_f = extra_compile_args['nvcc']; _k = []; _i = 0",
    "while _i < len(_f):",
    "    if _f[_i] == '-gencode' and _i + 1 < len(_f):",
    f"        _k += _f[_i:_i + 2] if _f[_i + 1].endswith('sm_{arch}') else []",
    "        _i += 2",
    "    else:",
    "        _k.append(_f[_i]); _i += 1",
    f"_k += [] if any('sm_{arch}' in x for x in _k) else ['-gencode', 'arch=compute_{arch},code=sm_{arch}']",
    "extra_compile_args['nvcc'] = _k",
    "print('nvcc flags:', _k)",
]) + "\n"
open("setup.py", "w").write(src[: m.start()] + patch + src[m.start():])
print("patched setup.py for sm_" + arch)
EOF
    export MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} NVCC_THREADS=${NVCC_THREADS:-2} TORCH_CUDA_ARCH_LIST="$ARCH_DOT"
    timeout "$BUILD_LIMIT" $PY -m pip install -v --no-build-isolation --no-deps --no-index . || { echo "BUILD FAILED rc=$?"; exit 1; }
    cd /
    if ! $PY -c "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn" ; then
      # The package __init__ also imports Mamba2/Mamba3 modules that may need packages absent here
      # (tilelang, quack); keep only what selective_scan_fn needs.
      INIT=$($PY -c "import importlib.util as u; print(u.find_spec('mamba_ssm').origin)")
      printf '__version__ = "%s"\n' "$(basename "$SDIST" .tar.gz | sed 's/mamba_ssm-//')" > "$INIT"
      $PY -c "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn; print('mamba-ssm imports after trimming __init__')" || exit 1
    fi
    echo "BUILD OK after $(( $(date +%s) - START ))s"
  ) > "$OUT/mamba_build.log" 2>&1 &
  BUILD_PID=$!
  set +m
  echo "mamba-ssm build started from $SDIST (limit ${BUILD_LIMIT}s), log: mamba_build.log"
else
  echo "no .whl/mamba_ssm-*.tar.gz carried: mamba-ssm sections will say it is not importable" | tee "$OUT/mamba_build.log"
fi

# ---- 2. the Triton kernel's tests on the GPU ---------------------------------------------------
if [ "${CMDD_SKIP_TESTS:-0}" != 1 ]; then
  timeout 240 $PY -m pytest -q -p no:cacheprovider -rs tests/test_scan_triton.py > "$OUT/pytest.log" 2>&1
  echo "pytest tests/test_scan_triton.py: rc=$? after $(elapsed)s"; tail -5 "$OUT/pytest.log"
fi

# ---- 3. wait for the build, then the benchmark ---------------------------------------------------
if [ -n "$BUILD_PID" ]; then
  wait "$BUILD_PID"; echo "mamba-ssm build: rc=$? after $(elapsed)s"
  kill -- -"$BUILD_PID" 2>/dev/null || true   # anything of the build still running (after a time-out)
  if [ "$(stat -c %s "$OUT/mamba_build.log")" -gt 8000000 ]; then
    tail -c 8000000 "$OUT/mamba_build.log" > /tmp/mamba_build.tail && mv /tmp/mamba_build.tail "$OUT/mamba_build.log"
  fi
  tail -3 "$OUT/mamba_build.log"
fi
BUDGET=$(( TOTAL - $(elapsed) - 15 ))
[ "$BUDGET" -gt 540 ] && BUDGET=540
echo "benchmark budget ${BUDGET}s"
$PY benchmarks/gpu_bench.py --out "$OUT" --budget "$BUDGET" ${CMDD_BENCH_ONLY:+--only "$CMDD_BENCH_ONLY"} > "$OUT/bench.log" 2>&1
echo "gpu_bench.py: rc=$? after $(elapsed)s"
cat "$OUT/gpu_results.md" 2>/dev/null || tail -40 "$OUT/bench.log"
