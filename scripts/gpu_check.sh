#!/usr/bin/env bash
# The prepared GPU check (issue 14): run from the repository root on a machine with one GPU,
#
#     bash scripts/gpu_check.sh            # 8 minutes at most (tests 2, measurements 5.7)
#     bash scripts/gpu_check.sh --smoke    # seconds on a CPU: checks the script itself
#
# 1. runs the `gpu` pytest marker (tests that need CUDA);
# 2. runs benchmarks/gpu_check.py: PGD-10 adversarial-training step of ResNet-18 in fp32,
#    bf16, channels_last and compiled; PGD-10 and APGD-CE throughput on ResNet-18 and
#    WRN-28-10; host-side time per attack call; peak memory;
# 3. prints a Markdown block for benchmarks/RESULTS.md, also written to $OUT/gpu_check.md when
#    OUT is set (else to ./gpu_check.md).
#
# Assumptions: no data download and no network. Python: $PYTHON if set, else .venv/bin/python
# if it imports torch, else python3. The package is used from src/ through PYTHONPATH (nothing
# is installed); torch, numpy, safetensors, scipy, scikit-learn, matplotlib and pytest must be
# importable (a CUDA image with PyTorch usually has them). If torch is missing the script tries
# `pip install torch` once, which needs a package index. Extra arguments go to
# benchmarks/gpu_check.py (e.g. --budget-s 200). GPU_CHECK_TESTS overrides the test paths.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python
else PY=python3
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check: $PY has no torch; trying 'pip install torch' (needs a package index)" >&2
    "$PY" -m pip install -q torch || { echo "gpu_check: no torch for $PY; set PYTHON=/path/to/python with torch" >&2; exit 2; }
fi
missing=$("$PY" - <<'EOF'
import importlib.util as u
print(" ".join(m for m in ("numpy", "safetensors", "scipy", "sklearn", "matplotlib", "pytest")
               if u.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: $PY lacks: $missing (pip install them, or set PYTHON)" >&2
    exit 2
fi

smoke=0
for a in "$@"; do [ "$a" = "--smoke" ] && smoke=1; done
has_cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$smoke" = 0 ] && [ "$has_cuda" != 1 ]; then
    echo "gpu_check: torch sees no CUDA device; run with --smoke for a CPU dry run" >&2
    exit 2
fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
md=${OUT:+$OUT/gpu_check.md}
md=${md:-gpu_check.md}
log=$(mktemp)
echo "== gpu_check: $("$PY" -c 'import sys, torch; print(sys.executable, torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')" >&2

# 1. the gpu marker (CUDA tests skip themselves without a GPU)
# shellcheck disable=SC2086
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu ${GPU_CHECK_TESTS:-tests} 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}
summary=$(grep -E "passed|failed|skipped|error|deselected|no tests ran" "$log" | tail -n 1)
[ "$test_rc" = 124 ] && summary="timed out after 120 s ($summary)"
summary="${summary//|//} (exit $test_rc)"

# 2. the measurements; the block is rewritten after each section, so a timeout keeps the rest
timeout 340 "$PY" benchmarks/gpu_check.py --md "$md" --pytest-summary "$summary" "$@" >/dev/null
bench_rc=$?
echo
echo "<!-- gpu_check.sh: pytest exit $test_rc, benchmark exit $bench_rc -->"
cat "$md"
rm -f "$log"
# pytest exits 5 when no test is marked gpu in the given paths: not a failure of the check
[ "$test_rc" = 0 ] || [ "$test_rc" = 5 ] || exit 1
exit "$bench_rc"
