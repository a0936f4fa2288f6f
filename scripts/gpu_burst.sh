#!/usr/bin/env bash
# The GPU burst (training.burst): run on the lent machine (JAX, no TensorFlow) from the repo root.
#   bash scripts/gpu_burst.sh PLAN [MINUTES]      on the machine: PLAN's runs side by side
#   bash scripts/gpu_burst.sh --dry-run PLAN      here: the device's limits for PLAN's call, then
#                                                 the same launcher for 2 CPU steps of a tiny model
# PLAN is one of training.burst.PLANS: pair (P1 every group, P2 without 44000, from the shipped
# weights), single (S1, S2: the same with template negatives), light (the stage-3 encoder).
# Each run has its own pack (burst/pack/<name>.npz) and initial weights (burst/init/<mode>/, the
# shipped weights as float16 shards); the call carries them, and the wheels (burst/whl), and
# leaves weights/*.keras behind (python -m training.burst hide). Checkpoints land in $OUT/<run>
# every 2 minutes (two <= 15.5 MiB shards, state.json, train_log.jsonl: 8 files for two runs).
# Here, afterwards: python -m training.stint (README, "When a GPU is lent").
set -uo pipefail
if [ "${1:-}" = "--dry-run" ]; then
  shift
  plan="${1:?usage: gpu_burst.sh --dry-run PLAN [--strict]}"; shift
  exec env KERAS_BACKEND=jax JAX_PLATFORMS=cpu "${PYTHON:-python}" -m training.burst dry-run "$plan" "$@"
fi
plan="${1:?usage: gpu_burst.sh PLAN [MINUTES]}"
minutes="${2:-3.5}"
out="${OUT:-runs/burst}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site burst/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m training.burst launch "$plan" --minutes "$minutes" --out "$out"
status=$?
ls -la "$out"/*
exit $status
