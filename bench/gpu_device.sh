#!/usr/bin/env bash
# The GPU machine's command for bench/gpu.py: install the carried wheels, run the bench, leave the
# JSON, the Markdown table and the log in $OUT. Needs .bench-tools/ (made here by bench/gpu_tools.sh)
# carried along. Extra arguments go to bench/gpu.py (e.g. --variants eager,all --skip cold).
# Budget (8 minutes of device time with the machine's start): no new measurement after BENCH_BUDGET_S
# (default 300 s), the bench killed at BENCH_TIMEOUT_S (default 420 s; the JSON and table written after
# each measurement stay); give the device call timeout_s=480. BENCH_ALLOW_CPU=1 tries the script on a
# machine without a GPU (tiny models: pass --width 64 --height 96 --steps 2 to keep it short).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS=${BENCH_TOOLS:-.bench-tools}
OUT=${OUT:-/tmp/bench-out}
SITE=${BENCH_SITE:-/tmp/bench-site}
PYTHON=${PYTHON:-python3}

die() { echo "gpu_device: $*" >&2; exit 1; }

check_tools() {
  compgen -G "$TOOLS/wheels/*.whl" >/dev/null \
    || die "no wheels in $TOOLS/wheels: run 'bash bench/gpu_tools.sh PATH/TO/CatVTON' first and carry $TOOLS"
  [ -f "$TOOLS/CatVTON/model/pipeline.py" ] \
    || die "no reference in $TOOLS/CatVTON: run 'bash bench/gpu_tools.sh PATH/TO/CatVTON' first and carry $TOOLS"
}

check_gpu() {
  [ "${BENCH_ALLOW_CPU:-0}" = 1 ] && return 0
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || die "nvidia-smi failed: this machine shows no NVIDIA GPU"
  "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || die "$PYTHON's torch sees no CUDA device: check the driver (nvidia-smi) and torch's CUDA build"
}

install_wheels() {
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$TOOLS"/wheels/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" - <<'PY'
import importlib.metadata as m

def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "missing"

print("packages:", ", ".join(f"{n} {version(n)}" for n in
      ("torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub", "triton")))
PY
}

run_bench() {
  mkdir -p "$OUT"
  PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT_S:-420}" "$PYTHON" bench/gpu.py --reference "$TOOLS/CatVTON" \
    --budget-s "${BENCH_BUDGET_S:-300}" --out "$OUT/gpu-results.json" --table "$OUT/gpu-results.md" "$@" 2>&1 \
    | tee "$OUT/gpu-bench.log"
}

check_tools
check_gpu
install_wheels
run_bench "$@"
