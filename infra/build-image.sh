#!/bin/sh
# Build (and with --push, push) the node image, tagged <registry>/novarch-batch:<pyproject version>-gpu.
# Usage: infra/build-image.sh [--push]    (REGISTRY defaults to ghcr.io/novarch)
set -eu
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
[ -n "$VERSION" ] || { echo "no version = \"...\" line in pyproject.toml" >&2; exit 1; }
IMAGE="${REGISTRY:-ghcr.io/novarch}/novarch-batch:${VERSION}-gpu"
docker build -f infra/Dockerfile -t "$IMAGE" .
if [ "${1:-}" = "--push" ]; then docker push "$IMAGE"; fi
echo "$IMAGE"
