#!/usr/bin/env bash
# One command from a fresh clone to the full test run (lint, types, tests):
#   ./scripts/test.sh [pytest args]
# Installs the project with its test extra into .venv and, where apt is usable, Debian's
# chromium for the browser test of the inspection page.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
     >/dev/null) || echo "chromium could not be installed: the browser test will skip"
fi
# The records tests start a real PostgreSQL server (Debian's), as the postgres user.
if ! command -v pg_ctl >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
     >/dev/null) || echo "postgresql could not be installed: the PostgreSQL tests will skip"
fi
# The CFX tests start a real RabbitMQ node (Debian's, with its AMQP 1.0 plugin).
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server \
     >/dev/null) || echo "rabbitmq-server could not be installed: the CFX broker tests will skip"
fi
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check .
.venv/bin/mypy app
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
