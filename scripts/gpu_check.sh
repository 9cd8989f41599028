#!/usr/bin/env bash
# The GPU check: one script, about 8 minutes on one H100 or H200.
#
#   bash scripts/gpu_check.sh                  # writes bench/gpu/bench.json and bench.md
#   PY=/path/to/python bash scripts/gpu_check.sh --quick
#
# At scale=paper (the MONAI reference networks and image sizes) it runs the small and base 2D
# and 3D models for a short window each, through lpm's trainers and through a plain PyTorch loop
# over the same networks and batches: time and NVML counter energy per iteration, and how long
# a batch takes to load (pinned and not). It compares NVML's energy counter with power sampled
# and integrated over the same window (target: within 2%), then measures the speed-up
# techniques of conf/speedup/ on the base 3D model against the baseline. It prints one table
# (lpm.bench's), last. Work that would end past the time budget is skipped, and its row says so.
#
# Needs an NVIDIA driver and a torch built with CUDA in $PY (default: .venv/bin/python; `make
# install` puts a CPU-only torch there unless TORCH= names a CUDA build).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/gpu}
# Seconds after which the Python part starts nothing new; what runs then still finishes.
BUDGET_S=${BUDGET_S:-360}
# A hard stop under the 8 minutes, should one piece of work run far over its estimate.
LIMIT_S=${LIMIT_S:-470}

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no nvidia-smi here: no NVIDIA driver, so no GPU to check" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  version=$("$PY" -c 'import torch; print(torch.__version__)')
  echo "gpu_check: torch $version in $PY sees no CUDA device (a CPU-only build?);" \
    "install a CUDA build of torch there, or point PY at a python that has one" >&2
  exit 2
fi

# W&B and Lightning stay quiet and offline; the benchmark uses no logger anyway.
export WANDB_MODE=offline
timeout --signal=INT "$LIMIT_S" "$PY" -m lpm.bench gpu --out "$OUT" --budget-s "$BUDGET_S" "$@"
