#!/usr/bin/env bash
# GPU check (issue 4): ResNet-18/50, eager and compiled, fp32 and bf16, on a CUDA device; writes
# results.csv, results.md, env.json into --out. Options: see `python scripts/gpu_check.py --help`.
set -euo pipefail
export PYTHONUNBUFFERED=1  # progress lines appear as each run finishes, also through a pipe or log
exec python "$(dirname "$0")/gpu_check.py" "$@"
