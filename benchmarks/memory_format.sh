#!/usr/bin/env bash
# Channels-last against NCHW for the bare sampler on this machine's CPU, 1 and 2 threads, 3
# interleaved runs each (BENCHMARKS.md): bash benchmarks/memory_format.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for run in 1 2 3; do
  for threads in 1 2; do
    for layout in "" --contiguous; do
      echo "run $run threads $threads ${layout:-"--channels-last"} $($PY -m benchmarks.bare_sampler --count 384 --steps 5 --guidance 1 --threads $threads $layout)"
    done
  done
done
