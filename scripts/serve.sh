#!/usr/bin/env bash
# One command from a fresh clone to a running service on the shipped model:
#   ./scripts/serve.sh            (then open http://127.0.0.1:8000/)
# Settings come from PCB_* variables (see README), e.g. PCB_HOST=0.0.0.0 PCB_API_KEYS='station-1:inspect:KEY'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh server
# Golden boards (PUT /v1/golden-boards/...) live here, in the clone, ignored by git.
export PCB_DATA_DIR="${PCB_DATA_DIR:-./data}"
exec .venv/bin/pcb-inspect serve "$@"
