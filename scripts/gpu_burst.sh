#!/usr/bin/env bash
# The GPU burst: run on the device machine (an H100 with JAX, no TensorFlow) from the repo root.
#   bash scripts/gpu_burst.sh MINUTES [INIT_DIR]
# Needs, carried beside the code: .whl/ (keras, namex, optree wheels) and runs/pack/train.npz
# (python -m training.pack). Trains the golden-board (pair) and the single-image model side by
# side, each on half the GPU, for MINUTES, from the committed state when INIT_DIR holds
# <mode>.keras and <mode>.state.json. Checkpoints land in $OUT/pair and $OUT/single every
# 2 minutes (4 files each: two <= 15.5 MiB shards, state.json, train_log.jsonl).
# Here, afterwards: python -m training.convert --ckpt <files_at>/pair --out weights/...
set -uo pipefail
minutes="${1:-8}"
init="${2:-}"
out="${OUT:-runs/burst}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# Two processes share the GPU: neither may take JAX's default 75% of its memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
nvidia-smi -L
pids=()
for mode in pair single; do
  resume=()
  if [ -n "$init" ] && [ -f "$init/$mode.keras" ]; then
    resume=(--init "$init/$mode.keras" --state "$init/$mode.state.json")
  fi
  python3 -m training.jax_train --pack runs/pack/train.npz --out "$out/$mode" --mode "$mode" \
    --minutes "$minutes" --precision mixed_bfloat16 --crop 384 --batch-size 24 --workers 7 \
    --warmup-steps 200 --lr 2e-3 --shard-mb 15.5 --log-every 100 "${resume[@]}" \
    > "/tmp/$mode.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for mode in pair single; do
  echo "== $mode"; grep -v '^I0000\|^W0000\|^WARNING: All' "/tmp/$mode.log" | tail -n 25
done
ls -la "$out"/*
exit $status
