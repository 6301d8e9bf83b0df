#!/usr/bin/env bash
# GPU check, one go, within about 6 minutes on one CUDA GPU: the bare sampler at the submit default
# (noise drawn ahead on threads, as actors do; drawn on the sampling thread; compiled), with the
# distilled student, the sampler quality grid on v2, and `submit` end to end through a local Ray with
# GPU actors into a local folder (embedded images at 1, 2 and 4 actors per GPU, compiled, and
# per-image PNGs), the per-sample noise's cost, PNG encoding on threads against processes, then
# efficiency = end to end / bare, all in this one run.
#   bash benchmarks/gpu_check.sh                       results in $OUT (or benchmarks/results/gpu)
#   DEVICE=cpu BARE_COUNT=64 E2E_COUNT=64 BATCH=16 QUALITY=0 bash benchmarks/gpu_check.sh   (the CPU rehearsal;
#   tests/test_gpu_check.py runs a shorter one)
# The GPU machine has neither Ray nor this project installed: both come from the checkout
# (benchmarks/from_checkout.sh; Ray from .ray-pack/ray-site.tar.xz, made by bash benchmarks/pack_ray.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
BARE_COUNT=${BARE_COUNT:-32768}
E2E_COUNT=${E2E_COUNT:-200000}  # about a minute of sampling at 3,000+ images/s
BATCH=${BATCH:-1024}
QUALITY=${QUALITY:-1}
E2E_KS=${E2E_KS:-1 2 4}  # actors per GPU tried with embedded images
FILES=${FILES:-1}  # 0: skip the per-image PNG run
COMPILE=${COMPILE:-1}  # 0: skip the compiled runs (bare and end to end)
ENCODE_IMAGES=${ENCODE_IMAGES:-65536}
ENCODE_WORKERS=${ENCODE_WORKERS:-$(nproc)}
mkdir -p "$RESULTS"
source benchmarks/from_checkout.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== bare sampler: the submit default (dpmpp-2m-sde, 10 steps, guidance 2), batch $BATCH"
$PY -m benchmarks.bare_sampler --count "$BARE_COUNT" --sampler dpmpp-2m-sde --steps 10 --guidance 2 --batch-size "$BATCH" \
  --device "$DEVICE" | tee "$RESULTS/bare_default.json"
echo "== bare sampler: the default with each step's noise drawn on the sampling thread (no noise threads)"
$PY -m benchmarks.bare_sampler --count "$BARE_COUNT" --sampler dpmpp-2m-sde --steps 10 --guidance 2 --batch-size "$BATCH" \
  --device "$DEVICE" --noise-threads 0 | tee "$RESULTS/bare_default_inline_noise.json"
if [ "$COMPILE" = 1 ]; then
  echo "== bare sampler: the default, --compile (CUDA graphs on a GPU)"
  $PY -m benchmarks.bare_sampler --count "$BARE_COUNT" --sampler dpmpp-2m-sde --steps 10 --guidance 2 --batch-size "$BATCH" \
    --device "$DEVICE" --compile | tee "$RESULTS/bare_default_compiled.json"
fi
echo "== bare sampler: --sampler distilled (4 steps, one evaluation each), batch $BATCH"
$PY -m benchmarks.bare_sampler --count "$BARE_COUNT" --sampler distilled --steps 4 --guidance 2 --batch-size "$BATCH" \
  --model novarch-tiny-distilled --device "$DEVICE" | tee "$RESULTS/bare_distilled.json"
echo "== per-sample noise: drawn when asked, or ahead on 1, 2, 4, 8 threads (the determinism contract's cost)"
$PY -m benchmarks.noise_cost --batch "$BATCH" --threads 1,2,4,8 --repeats 5 --out "$RESULTS/noise_cost.json"
echo "== PNG encoding: one thread, $ENCODE_WORKERS threads, $ENCODE_WORKERS processes"
$PY -m benchmarks.encode_pool --images "$ENCODE_IMAGES" --workers "$ENCODE_WORKERS" --repeats 3 --out "$RESULTS/encode_pool.json"
if [ "$QUALITY" = 1 ]; then
  echo "== sampler quality on v2: 500 buildings + 500 houses per setting"
  $PY -m benchmarks.sampler_quality --per-class 500 --batch 500 --device "$DEVICE" --out "$RESULTS/quality.json"
fi
if ! $PY -c "import ray" 2>/dev/null; then
  echo "== end to end skipped: no Ray here and no .ray-pack/ray-site.tar.xz (bash benchmarks/pack_ray.sh)"; exit 0
fi
e2e() {  # name, then submit flags
  local name=$1; shift
  echo "== end to end, $name: $E2E_COUNT images through Ray into a local folder"
  $PY -m novarch_batch.pipeline.cli submit --count "$E2E_COUNT" --batch-size "$BATCH" --device "$DEVICE" \
    --out "$WORK/out-$name" --json "$@" | tee "$RESULTS/e2e-$name.json"
  rm -rf "$WORK/out-$name"
}
# K actors share the card (each asks Ray for 1/K of it), so one samples while another encodes and
# writes; the fastest K is the measurement behind --actors-per-gpu's default.
actors() { [ "$DEVICE" = cuda ] && echo --actors-per-gpu "$1" || echo --actors "$1"; }  # K per GPU, or K CPU actors
for k in $E2E_KS; do
  e2e "parquet-k$k" --format parquet $(actors "$k")
done
[ "$COMPILE" = 0 ] || e2e parquet-k1-compiled --format parquet --compile $(actors 1)
[ "$FILES" = 0 ] || e2e files-k1 --format files $(actors 1)
$PY - "$RESULTS" <<'EOF'
import json, pathlib, sys
results = pathlib.Path(sys.argv[1])
bare = json.loads((results / "bare_default.json").read_text())["images_per_second"]
variants = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("bare_*.json"))}
rows = {p.stem[4:]: json.loads(p.read_text()) for p in sorted(results.glob("e2e-*.json"))}
# "whole": count / wall time of the job (Ray and model start included); "sampling": from the first
# ready actor to the end, which is what a long job converges to
sampling = {name: r["count"] / max(r["seconds"] - r["startup_seconds"], 1e-9) for name, r in rows.items()}
summary = {"bare_images_per_second": bare,
           "bare": {name: {"images_per_second": r["images_per_second"], "network_evaluations_per_second":
                           r["images_per_second"] * r["network_evaluations_per_image"]} for name, r in variants.items()},
           "e2e": {name: {"images_per_second_whole": r["images_per_second"], "images_per_second_sampling": sampling[name],
                          "efficiency_whole": r["images_per_second"] / bare, "efficiency_sampling": sampling[name] / bare}
                   for name, r in rows.items()}}
(results / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
EOF
