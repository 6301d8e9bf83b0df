#!/usr/bin/env bash
# NovArch v2 on one GPU, within one lent call (10 minutes at most): trains CANDIDATES for
# TRAIN_SECONDS (by default the shipped widths 32,64,64 alone, v-prediction on a zero-terminal-SNR
# schedule: alone it makes about twice the steps per second of two side by side), returns each model
# as a tar, then scores what the model issue's targets need, most telling first, every row printed
# (and kept in $OUT) the moment it is judged, in both of evaluate's feature spaces:
#   1. submit's defaults (dpmpp-2m-sde, 10 karras steps, no guidance): building, house, any; SEEDS
#   2. dpmpp-2m, 10 karras steps, no guidance: building, house; SEEDS      (fidelity: the solver)
#   3. ddpm, REFERENCE_STEPS trailing steps, no guidance: building, house; REFERENCE_SEEDS (its reference)
# Each scoring command gets only the time left before DEADLINE_SECONDS (counted from the start), so
# the lent call's own limit never cuts the script: a row cut short is the only loss.
#   bash training/gpu_train.sh          results in $OUT (or runs/gpu-train): <name>.tar.part* (cat them |
#                                       tar -x: the model folder and its training log), scores-<name>.log
#   CANDIDATES="v2-w32 v2-w64" bash training/gpu_train.sh     two side by side, sharing the GPU
#   DEVICE=cpu TRAIN_SECONDS=20 BATCH=8 DATA_WORKERS=1 COUNT=16 SEEDS=10 REFERENCE_STEPS=20 bash training/gpu_train.sh   (the CPU rehearsal)
# It runs from a checkout without installing it (benchmarks/from_checkout.sh); on the GPU machine, which
# lacks diffusers, carry .device-pack (bash benchmarks/pack_device.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
STARTED=$SECONDS
RESULTS=${OUT:-runs/gpu-train}
DEVICE=${DEVICE:-cuda}
CANDIDATES=${CANDIDATES:-v2-w32}
TRAIN_SECONDS=${TRAIN_SECONDS:-330}
DEADLINE_SECONDS=${DEADLINE_SECONDS:-560}
COUNT=${COUNT:-1000}
SEEDS=${SEEDS:-10,11,12,13,14}
REFERENCE_STEPS=${REFERENCE_STEPS:-1000}
REFERENCE_SEEDS=${REFERENCE_SEEDS:-10,11}
DATA_WORKERS=${DATA_WORKERS:-12}
BATCH=${BATCH:-512}
mkdir -p "$RESULTS"
source benchmarks/from_checkout.sh

flags_of() {  # the candidate's own training flags (MODEL.md, "Training")
  case $1 in
    v2-w32) echo "--lr 2e-3 --channels 32,64,64" ;;
    v2-w64) echo "--lr 1e-3 --channels 64,128,128" ;;
    *) echo "unknown candidate $1 (v2-w32, v2-w64)" >&2; return 1 ;;
  esac
}

train() {  # name
  local name=$1 flags
  flags=$(flags_of "$name") || return 1
  # --max-seconds times the steps; the timeout (start-up and saving besides) keeps a hung run from taking
  # the call, so its log still comes back in the tar below
  timeout $((TRAIN_SECONDS + 90)) $PY -m novarch_batch.training.train --out "$WORK/$name" --device "$DEVICE" --steps 1000000 \
    --warmup 200 --max-seconds "$TRAIN_SECONDS" --data-workers "$DATA_WORKERS" --log-every 50 --batch-size "$BATCH" $flags \
    > "$WORK/train-$name.log" 2>&1 || { echo "== $name failed:"; tail -n 20 "$WORK/train-$name.log"; }
  echo "== $name trained: $(tail -n 1 "$WORK/$name/train_log.jsonl")"
  # at most 16 MB per file comes back from a lent machine: a wide model's tar travels in parts (cat them)
  tar -C "$WORK" -cf - "$name" "train-$name.log" | split -b 15000000 -d - "$RESULTS/$name.tar.part"
}

score() {  # name, classes, seeds, then the sampling flags; every row is a JSON line as soon as it is judged
  local name=$1 classes=$2 seeds=$3 left; shift 3
  left=$((STARTED + DEADLINE_SECONDS - SECONDS))
  if [ "$left" -le 5 ]; then echo "== $name: no time left for $*"; return; fi
  echo "== $name: $* ($classes; seeds $seeds; ${left} s left)"
  timeout "$left" $PY -m benchmarks.fd_spread --model "$WORK/$name" --classes "$classes" --seeds "$seeds" \
    --count "$COUNT" --batch "$COUNT" "$@" | sed "s/^/$name $1 $2 $3 $4 /"
}

echo "== training $CANDIDATES for $TRAIN_SECONDS s on $DEVICE"
for name in $CANDIDATES; do train "$name" & done
wait
for name in $CANDIDATES; do
  {
    score "$name" building,house,any "$SEEDS" --sampler dpmpp-2m-sde --steps 10 --guidance 1 --spacing karras
    score "$name" building,house "$SEEDS" --sampler dpmpp-2m --steps 10 --guidance 1 --spacing karras
    score "$name" building,house "$REFERENCE_SEEDS" --sampler ddpm --steps "$REFERENCE_STEPS" --guidance 1 --spacing trailing
  } 2>&1 | tee "$RESULTS/scores-$name.log"
done
echo "== done in $((SECONDS - STARTED)) s"
ls -la "$RESULTS"
