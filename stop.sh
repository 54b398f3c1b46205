#!/usr/bin/env bash
# Stop everything Aether started (services, NATS, PostgreSQL) and check that every port it used is free.
set -euo pipefail
source "$(dirname "$0")/scripts/lib/common.sh"
source "$AETHER_ROOT/scripts/lib/stack.sh"
cd "$AETHER_ROOT"
[ -x "$PY" ] || { ok "nothing to stop (no .venv: ./setup.sh never ran here)"; exit 0; }
stack_stop
