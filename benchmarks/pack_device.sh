#!/usr/bin/env bash
# What the GPU machine lacks, for a device call: it has no Ray, no diffusers and no package index, and
# takes at most 64 MiB per call.
#   bash benchmarks/pack_device.sh              -> .device-pack/site.tar.xz (about 30 MB; .device-pack/ is ignored)
#   PYVER=3.11 bash benchmarks/pack_device.sh   the same for this machine's Python (to rehearse the device run here)
# benchmarks/from_checkout.sh unpacks it onto PYTHONPATH when Ray or diffusers does not import, so a
# device call is just `bash benchmarks/gpu_check.sh` (or training/gpu_train.sh) with .device-pack carried.
# It downloads Ray's manylinux wheel at this project's Ray version, the packages Ray needs that the
# device image lacks (jsonschema, its helpers and attrs), and diffusers at this project's version with
# importlib_metadata (what the model scripts ran with there); unpacks them into one folder, and drops
# what a local Ray with actors does not use: the Java jars, RLlib, Tune, Serve, Train, the LLM library
# and the dashboard's source maps. Ray core and Ray Data still work without them (DESIGN.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.device-pack}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-.venv/bin/python}
RAY_VERSION=${RAY_VERSION:-$($PY -c "import ray; print(ray.__version__)")}
DIFFUSERS_VERSION=${DIFFUSERS_VERSION:-$($PY -c "import diffusers; print(diffusers.__version__)")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DEST" "$WORK/wheels" "$WORK/site"
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$WORK/wheels" "ray==$RAY_VERSION" jsonschema referencing jsonschema-specifications rpds-py \
  attrs "diffusers==$DIFFUSERS_VERSION" importlib_metadata==10.2.0 zipp
for wheel in "$WORK"/wheels/*.whl; do
  unzip -q -o "$wheel" -d "$WORK/site"  # unzip keeps the executable bits of raylet and gcs_server
done
rm -rf "$WORK"/site/ray/jars "$WORK"/site/ray/rllib "$WORK"/site/ray/tune "$WORK"/site/ray/serve \
  "$WORK"/site/ray/train "$WORK"/site/ray/llm
find "$WORK/site/ray/dashboard" -name "*.map" -delete
chmod -R u+rwX,go+rX "$WORK/site"
tar -C "$WORK/site" -cf - . | xz -6 -T0 > "$DEST/site.tar.xz"
echo "$DEST/site.tar.xz: Ray $RAY_VERSION and diffusers $DIFFUSERS_VERSION for Python $PYVER, $(du -m "$DEST/site.tar.xz" | cut -f1) MB"
