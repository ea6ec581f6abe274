#!/bin/sh
# Run ON the device machine, from the repository root (one call; see docs/benchmarks.md):
#   sh benchmarks/gpu/device.sh            # installs forensics there (no network), then gpu_bench.py
#   sh benchmarks/gpu/device.sh --skip command
# The image has torch, timm and the other dependencies; the wheels of .whl/ (benchmarks/gpu/prepare.sh)
# bring what it lacks. The summary is printed and written to $OUT/gpu_bench.json.
set -e
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
# the bundled plugins come in through entry points: forensics must be installed, not only on the path
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile -e . >/tmp/install.log 2>&1 \
    || { tail -5 /tmp/install.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu/gpu_bench.py "$@"
