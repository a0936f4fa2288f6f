#!/usr/bin/env bash
# The next GPU burst, end to end (README, "When a GPU is lent"). Run here, in the session's
# checkout (the device tool sends that checkout), with the DeepPCB training split at DATA:
#   bash scripts/next_burst.sh before DATA
#       burst/ (the shipped weights as float16 shards, the packs, the wheels), the dry runs of
#       both plans, weights/*.keras out of git's index, the strict checks; prints the two calls.
#   ... the two device calls it printed: plan pair, then plan single (5.5 minutes each at most) ...
#   bash scripts/next_burst.sh after DATA PAIR_DIR SINGLE_DIR
#       weights/*.keras back into git's index; P2 and S2 (trained without group 44000) scored
#       on 44000 against the shipped models; P1 and S1 (every group) shipped only where their
#       twin gained there, with a card that says they have no held-out design left.
# Between `before` and `after`, commit nothing: the .keras files are out of the index.
set -euo pipefail
step="${1:?usage: next_burst.sh before DATA | after DATA PAIR_DIR SINGLE_DIR}"
data="${2:?the DeepPCB training split, e.g. ../shared/datasets/deeppcb}"
py="${PYTHON:-python}"
case "$step" in
  before)
    "$py" -m training.burst prepare --data "$data"
    bash scripts/gpu_burst.sh --dry-run pair
    bash scripts/gpu_burst.sh --dry-run single
    "$py" -m training.burst hide
    for plan in pair single; do
      KERAS_BACKEND=jax "$py" -m training.burst check "$plan" --strict
    done
    echo "Now the device: run(command, carry, timeout_s) as each 'call' above says, pair first;"
    echo "then: bash scripts/next_burst.sh after $data <pair files_at> <single files_at>"
    ;;
  after)
    pair="${3:?the folder the pair call's files came back to}"
    single="${4:?the folder the single call's files came back to}"
    "$py" -m training.burst restore
    "$py" -m training.stint --ckpt "$pair/P1" --twin "$pair/P2" --val-groups 44000 \
      --data "$data" --ship
    "$py" -m training.stint --ckpt "$single/S1" --twin "$single/S2" --val-groups 44000 \
      --data "$data" --ship
    git status --short weights/
    ;;
  *)
    echo "unknown step: $step (expected before or after)" >&2
    exit 2
    ;;
esac
