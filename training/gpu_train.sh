#!/usr/bin/env bash
# NovArch v2 on one GPU, in one go: trains two candidates side by side for TRAIN_SECONDS each (the
# shipped widths 32,64,64 and a wider 64,128,128, both v-prediction with a zero-terminal-SNR
# schedule), then scores each with 1,000 images per row (building, house, any) at the submit
# default, at dpmpp-2m 10 steps and at DDPM-1000, the reference (MODEL.md), at guidance 2 and without.
#   bash training/gpu_train.sh              results in $OUT (or runs/gpu-train): each model as a tar
#                                           in parts (cat v2-w32.tar.part* | tar -x), scores.tar, logs
#   DEVICE=cpu TRAIN_SECONDS=20 BATCH=8 DATA_WORKERS=1 COUNT=16 REFERENCE_STEPS=20 bash training/gpu_train.sh   (the CPU rehearsal)
# It runs from a checkout without installing it (benchmarks/from_checkout.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-runs/gpu-train}
DEVICE=${DEVICE:-cuda}
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
COUNT=${COUNT:-1000}
REFERENCE_STEPS=${REFERENCE_STEPS:-1000}
DATA_WORKERS=${DATA_WORKERS:-6}
BATCH=${BATCH:-512}
mkdir -p "$RESULTS"
source benchmarks/from_checkout.sh

train() {  # name, then train flags
  local name=$1; shift
  $PY -m novarch_batch.training.train --out "$WORK/$name" --device "$DEVICE" --steps 1000000 --warmup 200 \
    --max-seconds "$TRAIN_SECONDS" --data-workers "$DATA_WORKERS" --log-every 50 "$@" > "$WORK/train-$name.log" 2>&1 \
    || { echo "== $name failed:"; tail -n 20 "$WORK/train-$name.log"; }
  echo "== $name trained: $(tail -n 1 "$WORK/$name/train_log.jsonl")"
  # at most 16 MB per file comes back from a lent machine: a wide model's tar travels in parts (cat them)
  tar -C "$WORK" -cf - "$name" "train-$name.log" | split -b 15000000 -d - "$RESULTS/$name.tar.part"
}

score() {  # name: the sampler settings one after another, 1,000 images per row each
  local name=$1
  # submit's default (the karras grid, no guidance); the deterministic solver (on the karras grid,
  # its best) and the reference at guidance 2 at every step, as MODEL.md's tables compare them; both
  # again without guidance, the defaults' (each at submit's --final-timestep)
  for setting in "dpmpp-2m-sde 10 all 1 karras" "dpmpp-2m 10 all 2 karras" "ddpm $REFERENCE_STEPS all 2 trailing" \
                 "dpmpp-2m 10 all 1 karras" "ddpm $REFERENCE_STEPS all 1 trailing"; do
    set -- $setting
    echo "== $name: $1 $2 steps ($5), guidance $4 in $3"
    $PY -m novarch_batch.training.score_model "$WORK/$name" --count "$COUNT" --sampler "$1" --steps "$2" \
      --guidance "$4" --guidance-interval "$3" --spacing "$5" --device "$DEVICE" --batch "$COUNT" \
      --out "$WORK/scores-$name/$1-$2-g$4-$3-$5" | sed "s/^/$name $1-$2-g$4-$3-$5 /"
  done
}

echo "== training two candidates for $TRAIN_SECONDS s each, side by side on $DEVICE"
train v2-w32 --batch-size "$BATCH" --lr 2e-3 --channels 32,64,64 &
train v2-w64 --batch-size "$BATCH" --lr 1e-3 --channels 64,128,128 &
wait
score v2-w32 2>&1 | tee "$RESULTS/scores-v2-w32.log" &
score v2-w64 2>&1 | tee "$RESULTS/scores-v2-w64.log" &
wait
tar -C "$WORK" -cf "$RESULTS/scores.tar" scores-v2-w32 scores-v2-w64
ls -la "$RESULTS"
