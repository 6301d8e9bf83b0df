#!/usr/bin/env bash
# Ray for the GPU machine, which has no Ray and no package index, and takes at most 64 MiB per call.
#   bash benchmarks/pack_ray.sh                 -> .ray-pack/ray-site.tar.xz (about 30 MB; .ray-pack/ is ignored)
#   PYVER=3.11 bash benchmarks/pack_ray.sh      the same for this machine's Python (to rehearse the device run here)
# On the device, before anything imports Ray:
#   mkdir -p /tmp/site && xz -dc .ray-pack/ray-site.tar.xz | tar -x -C /tmp/site && export PYTHONPATH=/tmp/site
# It downloads Ray's manylinux wheel at this project's Ray version (and the few packages Ray needs that
# the device image lacks: jsonschema and its helpers), unpacks them into one folder, and drops what a
# local Ray with actors does not use: the Java jars, RLlib, Tune, Serve, Train, the LLM library and the
# dashboard's source maps. Ray core and Ray Data still work without them (DESIGN.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.ray-pack}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-.venv/bin/python}
RAY_VERSION=${RAY_VERSION:-$($PY -c "import ray; print(ray.__version__)")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DEST" "$WORK/wheels" "$WORK/site"
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$WORK/wheels" "ray==$RAY_VERSION" jsonschema referencing jsonschema-specifications rpds-py
for wheel in "$WORK"/wheels/*.whl; do
  unzip -q -o "$wheel" -d "$WORK/site"  # unzip keeps the executable bits of raylet and gcs_server
done
rm -rf "$WORK"/site/ray/jars "$WORK"/site/ray/rllib "$WORK"/site/ray/tune "$WORK"/site/ray/serve \
  "$WORK"/site/ray/train "$WORK"/site/ray/llm
find "$WORK/site/ray/dashboard" -name "*.map" -delete
chmod -R u+rwX,go+rX "$WORK/site"
tar -C "$WORK/site" -cf - . | xz -6 -T0 > "$DEST/ray-site.tar.xz"
echo "$DEST/ray-site.tar.xz: Ray $RAY_VERSION for Python $PYVER, $(du -m "$DEST/ray-site.tar.xz" | cut -f1) MB"
