#!/usr/bin/env bash
# Install the pagedserve wheel and its server requirements into an image that already
# has torch (the ROCm base, or a CPU/CUDA wheel), and prove torch and Triton were not touched.
# Usage: install-engine.sh DIST_DIR   (holds pagedserve-*.whl, requirements-engine.txt and
# requirements-engine-nodeps.txt)
set -euo pipefail
dist="$1"
pins="$(mktemp)"

# What the base ships, pinned, so no requirement can swap in a CUDA torch or Triton.
python3 -m pip list --format=freeze | grep -iE '^(torch|triton|pytorch-triton-rocm)==' > "$pins"
echo "keeping the base's: $(tr '\n' ' ' < "$pins")"

python3 -m pip install --no-cache-dir --no-deps "$dist"/pagedserve-*.whl
python3 -m pip install --no-cache-dir -c "$pins" -r "$dist/requirements-engine.txt"
# these name `triton` as a requirement (docker/requirements.py says why they go without deps)
python3 -m pip install --no-cache-dir --no-deps -r "$dist/requirements-engine-nodeps.txt"

after="$(python3 -m pip list --format=freeze | grep -iE '^(torch|triton|pytorch-triton-rocm)==')"
if [ "$after" != "$(cat "$pins")" ]; then
    echo "torch/triton changed during install:" >&2
    echo "$after" >&2
    exit 1
fi
rm -f "$pins"
