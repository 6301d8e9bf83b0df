# Sourced by the GPU scripts (benchmarks/gpu_check.sh, training/gpu_train.sh, training/gpu_distill.sh):
# run the project from this checkout on a machine where it is not installed (the lent GPU machine).
# Sets PY and WORK (a fresh temporary folder); puts a novarch_batch folder of links to the source
# folders on PYTHONPATH when the package does not import, and Ray and diffusers from
# .device-pack/site.tar.xz (bash benchmarks/pack_device.sh) when either does not import and the pack is there. Prints the torch and
# diffusers versions and the GPU first: a package missing there fails in seconds, not minutes in.
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
if ! $PY -c "import novarch_batch.pipeline" 2>/dev/null; then
  mkdir -p "$WORK/pkg/novarch_batch"
  for d in pipeline workers storage training; do ln -s "$PWD/$d" "$WORK/pkg/novarch_batch/$d"; done
  export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! $PY -c "import ray, diffusers" 2>/dev/null && [ -f .device-pack/site.tar.xz ]; then
  mkdir -p "$WORK/site" && xz -dc .device-pack/site.tar.xz | tar -x -C "$WORK/site"
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
  || { echo "$PY cannot import torch and diffusers: install them, or set PYTHON to an interpreter that has them" >&2; exit 1; }
