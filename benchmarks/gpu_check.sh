#!/usr/bin/env bash
# GPU check, one go, within 5 minutes on a CUDA machine: the bare sampler at the default and at a
# 5-step setting, the sampler quality table (1,000 images per setting, DDPM-1000 reference), and
# the end-to-end job through Ray when Ray and the project are installed there.
#   bash benchmarks/gpu_check.sh            results in $OUT (or benchmarks/results/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-benchmarks/results/gpu}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import torch; print('device:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== bare sampler: dpmpp-2m-sde, 10 steps, guidance 2 (the submit default), batch 1024"
$PY -m benchmarks.bare_sampler --count 32768 --sampler dpmpp-2m-sde --steps 10 --guidance 2 --batch-size 1024 | tee "$RESULTS/bare_default.json"
echo "== bare sampler: ddpm, 5 steps, guidance 1, batch 1024"
$PY -m benchmarks.bare_sampler --count 32768 --sampler ddpm --steps 5 --guidance 1 --batch-size 1024 | tee "$RESULTS/bare_5steps.json"
echo "== sampler quality: 500 buildings + 500 houses per setting"
$PY -m benchmarks.sampler_quality --per-class 500 --batch 500 --out "$RESULTS/quality.json"
if $PY -c "import ray, boto3" 2>/dev/null && command -v novarch-batch >/dev/null; then
  # --actors-per-gpu K: K actors share the card (each asks Ray for 1/K of it), so one samples while
  # another encodes and uploads; the fastest K here is the default's measurement.
  for k in 1 2 4; do
    echo "== end to end, --actors-per-gpu $k: 20,000 images through Ray into a local folder"
    novarch-batch submit --count 20000 --batch-size 1024 --actors-per-gpu "$k" --out "$RESULTS/e2e-k$k" --json | tee "$RESULTS/e2e-k$k.json"
  done
else
  echo "== end to end skipped: Ray and the installed project are not on this machine (pip install -e . first)"
fi
