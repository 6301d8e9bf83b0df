#!/usr/bin/env bash
# GPU check, one go, within 6 minutes on one CUDA GPU. The runs go in order of importance; a run
# starts only if its expected length still fits in BUDGET seconds, a run that fails is recorded
# and the next one goes on, and summary.json is written whatever happened (both listed in it):
#   1. the bare sampler at the submit default, noise drawn ahead on the actors' threads (the product's
#      path), then drawn on the sampling thread; the noise and PNG-encoding rates of this machine's CPU;
#   2. `submit` end to end through a local Ray with one GPU actor into a local folder, embedded images,
#      for about E2E_SECONDS of sampling: efficiency = end to end / bare, same run;
#   3. the bare default compiled (CUDA graphs); the student; the default at a 4x micro-batch, and channels-last;
#   4. end to end at more actors per GPU (E2E_KS), compiled, and with per-image PNGs;
#   5. the v2 sampler-quality grid (QUALITY=1; off by default: measured with the model).
# summary.json: network evaluations/s of every bare variant, end to end / bare of every job.
#   bash benchmarks/gpu_check.sh                       results in $OUT (or benchmarks/results/gpu);
#   PACK=1 (with OUT) leaves summary.json and results.tar.gz (a device call returns 8 files at most)
#   DEVICE=cpu BARE_COUNT=64 E2E_COUNT=64 BATCH=16 bash benchmarks/gpu_check.sh   (the CPU rehearsal;
#   tests/test_gpu_check.py runs a shorter one)
# The GPU machine has neither Ray nor this project installed: both come from the checkout
# (benchmarks/from_checkout.sh; Ray and diffusers from .device-pack/site.tar.xz, made by bash benchmarks/pack_device.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-360}  # seconds by which every run should have ended (480, in a call of 540, also reaches E2E_KS)
BARE_COUNT=${BARE_COUNT:-32768}
BATCH=${BATCH:-1024}
E2E_SECONDS=${E2E_SECONDS:-65}
E2E_COUNT=${E2E_COUNT:-auto}  # auto: E2E_SECONDS at the bare default's rate
E2E_KS=${E2E_KS-2 4}  # actors per GPU tried beyond 1, with embedded images ("" for none)
FILES=${FILES:-1}  # 0: skip the per-image PNG run
COMPILE=${COMPILE:-1}  # 0: skip the compiled runs (bare and end to end)
EXTRA=${EXTRA:-1}  # 0: skip the student, 4x micro-batch and channels-last bare runs
QUALITY=${QUALITY:-0}
ENCODE_IMAGES=${ENCODE_IMAGES:-65536}
ENCODE_WORKERS=${ENCODE_WORKERS:-$(nproc)}
mkdir -p "$RESULTS"
: > "$RESULTS/not_run.txt"
source benchmarks/from_checkout.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

finish() {  # always: the summary, then (PACK=1) one tarball beside it
  $PY - "$RESULTS" <<'EOF' || echo "== summary failed"
import json, pathlib, sys
results = pathlib.Path(sys.argv[1])
variants = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("bare_*.json"))}
bare = variants.get("bare_default", {}).get("images_per_second")
rows = {p.stem[4:]: json.loads(p.read_text()) for p in sorted(results.glob("e2e-*.json"))}
# "whole": count / wall time of the job (Ray and model start included); "sampling": from the first
# ready actor to the end, which is what a long job converges to
sampling = {name: r["count"] / max(r["seconds"] - r["startup_seconds"], 1e-9) for name, r in rows.items()}
ratio = lambda rate: rate / bare if bare else None
summary = {"bare_images_per_second": bare,
           "bare": {name: {"images_per_second": r["images_per_second"], "network_evaluations_per_second":
                           r["images_per_second"] * r["network_evaluations_per_image"]} for name, r in variants.items()},
           "e2e": {name: {"images_per_second_whole": r["images_per_second"], "images_per_second_sampling": sampling[name],
                          "efficiency_whole": ratio(r["images_per_second"]), "efficiency_sampling": ratio(sampling[name])}
                   for name, r in rows.items()},
           "not_run": (results / "not_run.txt").read_text().splitlines()}
(results / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
EOF
  if [ "${PACK:-0}" = 1 ] && [ -n "${OUT:-}" ]; then  # a device call returns at most 8 files
    tar -czf "$WORK/results.tar.gz" -C "$RESULTS" --exclude summary.json .
    find "$RESULTS" -maxdepth 1 -type f ! -name summary.json -delete
    mv "$WORK/results.tar.gz" "$RESULTS/"
  fi
}
trap finish EXIT

fits() {  # name, expected seconds: true when the run would end within the budget; else it is recorded
  if [ $((SECONDS + $2)) -le "$BUDGET" ]; then return 0; fi
  echo "== skipped (would end after the ${BUDGET}s budget): $1" | tee -a "$RESULTS/not_run.txt"; return 1
}
record() {  # name, output file, then the command: a failure is recorded and the script goes on
  # No run outlives the budget by more than 20 s (a hang included): the summary is always written, which a
  # call killed at its own limit would not do.
  local name=$1 file=$2 left=$((BUDGET + 20 - SECONDS)); shift 2
  if [ "$left" -lt 10 ]; then left=10; fi
  if ! timeout "$left" "$@" | tee "$file"; then
    rm -f "$file"; echo "== failed (or cut at ${left} s): $name" | tee -a "$RESULTS/not_run.txt"
  fi
}
bare() {  # name, expected seconds, then bare_sampler flags; the submit default unless flags say otherwise
  local name=$1 need=$2; shift 2
  fits "bare_$name" "$need" || return 0
  echo "== bare sampler, $name"
  # --class any, as the end-to-end jobs below (submit's default): efficiency compares the same work
  record "bare_$name" "$RESULTS/bare_$name.json" $PY -m benchmarks.bare_sampler --count "$BARE_COUNT" --sampler dpmpp-2m-sde \
    --steps 10 --guidance 2 --class any --batch-size "$BATCH" --device "$DEVICE" "$@"
}
e2e() {  # name, count, expected seconds, then submit flags
  local name=$1 count=$2 need=$3; shift 3
  fits "e2e-$name" "$need" || return 0
  echo "== end to end, $name: $count images through Ray into a local folder"
  record "e2e-$name" "$RESULTS/e2e-$name.json" $PY -m novarch_batch.pipeline.cli submit --count "$count" --batch-size "$BATCH" \
    --device "$DEVICE" --placement-timeout 60 --out "$WORK/out-$name" --json "$@"
  rm -rf "$WORK/out-$name"
}
# K actors share the card (each asks Ray for 1/K of it), so one samples while another encodes and
# writes; the fastest K is the measurement behind --actors-per-gpu's default.
actors() { [ "$DEVICE" = cuda ] && echo --actors-per-gpu "$1" || echo --actors "$1"; }  # K per GPU, or K CPU actors
START=45  # seconds an end-to-end job takes to start Ray and load the model in its actors

bare default 40  # noise drawn ahead on the noise threads (4 on a GPU), as the actors do
[ "$DEVICE" != cuda ] || bare default_inline_noise 40 --noise-threads 0  # a CPU draws inline anyway
if fits noise_cost 20; then
  echo "== per-sample noise: drawn when asked, or ahead on 1, 2, 4, 8 threads (the determinism contract's cost)"
  record noise_cost "$RESULTS/noise_cost.log" $PY -m benchmarks.noise_cost --batch "$BATCH" --threads 1,2,4,8 --repeats 5 \
    --out "$RESULTS/noise_cost.json"
fi
if fits encode_pool 40; then
  echo "== PNG encoding: one thread, $ENCODE_WORKERS threads, $ENCODE_WORKERS processes, the actors' encoder"
  record encode_pool "$RESULTS/encode_pool.log" $PY -m benchmarks.encode_pool --images "$ENCODE_IMAGES" --workers "$ENCODE_WORKERS" \
    --repeats 3 --out "$RESULTS/encode_pool.json"
fi

E2E=1
if ! $PY -c "import ray" 2>/dev/null; then
  echo "== end to end not run: no Ray here and no .device-pack/site.tar.xz (bash benchmarks/pack_device.sh)" | tee -a "$RESULTS/not_run.txt"
  E2E=0
fi
if [ "$E2E_COUNT" = auto ]; then  # whole micro-batches, at least 8 of them
  E2E_COUNT=$($PY -c "import json, sys; r = json.load(open(sys.argv[1])); b = $BATCH; print(max(8, round(r['images_per_second'] * $E2E_SECONDS / b)) * b)" \
    "$RESULTS/bare_default.json" 2>/dev/null || echo $((8 * BATCH)))
fi
[ "$E2E" = 0 ] || e2e parquet-k1 "$E2E_COUNT" $((E2E_SECONDS + START)) --format parquet $(actors 1)

[ "$COMPILE" = 0 ] || bare default_compiled 120 --compile
if [ "$EXTRA" = 1 ]; then
  bare distilled 40 --sampler distilled --steps 4 --model novarch-tiny-distilled
  bare default_batch4x 40 --batch-size $((4 * BATCH))
  [ "$DEVICE" != cuda ] || bare default_channels_last 40 --channels-last
fi

if [ "$E2E" = 1 ]; then
  for k in $E2E_KS; do
    e2e "parquet-k$k" "$E2E_COUNT" $((E2E_SECONDS + START)) --format parquet $(actors "$k")
  done
  [ "$COMPILE" = 0 ] || e2e parquet-k1-compiled "$E2E_COUNT" $((E2E_SECONDS + START + 90)) --format parquet --compile $(actors 1)
  [ "$FILES" = 0 ] || e2e files-k1 "$(( (E2E_COUNT / 3 + BATCH - 1) / BATCH * BATCH ))" $((E2E_SECONDS / 3 + START)) \
    --format files $(actors 1)
fi
if [ "$QUALITY" = 1 ] && fits quality 150; then
  echo "== sampler quality on v2: 500 buildings + 500 houses per setting"
  record quality "$RESULTS/quality.log" $PY -m benchmarks.sampler_quality --per-class 500 --batch 500 --device "$DEVICE" \
    --out "$RESULTS/quality.json"
fi
