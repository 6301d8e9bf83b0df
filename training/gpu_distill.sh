#!/usr/bin/env bash
# The few-step student on one GPU, in one go: progressive distillation of the shipped NovArch v2
# from 64 DDIM steps to 4 with guidance 2 folded in, then scores with 1,000 images per row
# (building, house, any): the student at 4 steps and guidance 1 (one network evaluation per step),
# and the teacher's DDIM at 4 steps and guidance 2 for comparison. The reference, v2's DDPM-1000,
# is in benchmarks/results/gpu-h100/model_v2.json.
#   bash training/gpu_distill.sh            results in $OUT (or runs/gpu-distill)
#   DEVICE=cpu STEPS_PER_ROUND=2 BATCH=4 DATA_WORKERS=0 COUNT=8 bash training/gpu_distill.sh   (the CPU rehearsal)
#   MAX_SECONDS=165 SCORE=0 bash training/gpu_distill.sh    (distillation only, in a fixed time)
# Within one lent call (10 minutes): nothing runs past DEADLINE_SECONDS from the start (the distillation,
# then each score, get only the time left), so the student's tar and every finished row come back.
# It runs from a checkout without installing it (benchmarks/from_checkout.sh); on the GPU machine, which
# lacks diffusers, carry .device-pack (bash benchmarks/pack_device.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
STARTED=$SECONDS
DEADLINE_SECONDS=${DEADLINE_SECONDS:-560}
RESULTS=${OUT:-runs/gpu-distill}
DEVICE=${DEVICE:-cuda}
STEPS_PER_ROUND=${STEPS_PER_ROUND:-1000}
BATCH=${BATCH:-512}
DATA_WORKERS=${DATA_WORKERS:-8}
COUNT=${COUNT:-1000}
MAX_SECONDS=${MAX_SECONDS:-}  # set: every round fits in it (steps per round from round 1's pace, recorded)
SCORE=${SCORE:-1}  # 0: distil only (4-step scoring is cheap enough for a CPU)
mkdir -p "$RESULTS"
source benchmarks/from_checkout.sh

echo "== distilling workers/models/novarch-tiny: 64 -> 4 steps, $STEPS_PER_ROUND optimizer steps per round"
left() { echo $((STARTED + DEADLINE_SECONDS - SECONDS)); }
timeout $(( $(left) - 20 )) $PY -m novarch_batch.training.distill --teacher workers/models/novarch-tiny --out "$WORK/student" \
  --device "$DEVICE" --start-steps 64 --final-steps 4 --steps-per-round "$STEPS_PER_ROUND" --batch-size "$BATCH" \
  --data-workers "$DATA_WORKERS" ${MAX_SECONDS:+--max-seconds "$MAX_SECONDS"} > "$WORK/distill.log" 2>&1 \
  || { tail -n 20 "$WORK/distill.log"; cp "$WORK/distill.log" "$RESULTS/"; exit 1; }
tail -n 3 "$WORK/student/distill_log.jsonl"
tar -C "$WORK" -cf "$RESULTS/student.tar" student distill.log
[ "$SCORE" = 1 ] || exit 0

score() {  # label, folder, sampler, steps, guidance (at every step: the teacher's baseline is MODEL.md's 8 evaluations)
  # on the plain trailing grid (--final-timestep 999 --spacing trailing): the student's own, which --sampler distilled samples
  if [ "$(left)" -le 5 ]; then echo "== $1: no time left"; return; fi
  echo "== $1 ($(left) s left)"
  timeout "$(left)" $PY -m novarch_batch.training.score_model "$2" --count "$COUNT" --sampler "$3" --steps "$4" --guidance "$5" --guidance-interval all \
    --final-timestep 999 --spacing trailing \
    --device "$DEVICE" --batch "$COUNT" --out "$WORK/scores/$1" | sed "s/^/$1 /"
}
score student-ddim-4-g1 "$WORK/student" ddim 4 1 2>&1 | tee "$RESULTS/scores.log"
score teacher-ddim-4-g2 workers/models/novarch-tiny ddim 4 2 2>&1 | tee -a "$RESULTS/scores.log"
tar -C "$WORK" -cf "$RESULTS/scores.tar" scores
ls -la "$RESULTS"
