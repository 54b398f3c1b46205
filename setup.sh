#!/usr/bin/env bash
# Install everything Aether needs and start the whole stack under supervisord; safe to run again.
# Works as root and as a normal user with sudo. Environment: AETHER_PYTHON (interpreter for the venv),
# AETHER_AGENTS=simulated|nvml (default: NVML's GPUs when it finds any, else two simulated 4-GPU nodes).
set -euo pipefail
source "$(dirname "$0")/scripts/lib/common.sh"
source "$AETHER_ROOT/scripts/lib/install.sh"
source "$AETHER_ROOT/scripts/lib/stack.sh"
cd "$AETHER_ROOT"

command -v dpkg-query >/dev/null 2>&1 || warn "not a Debian/Ubuntu system: install PostgreSQL 15 and python3-venv yourself"
ensure_postgresql
ensure_timescaledb
ensure_venv
ensure_dashboard_packages
ensure_test_browser  # ./test.sh's browser tests

umask 077
"$PY" scripts/credentials.py ensure
umask 022

rc=0
stack_start || rc=$?
print_summary
if [ "$rc" -ne 0 ]; then
    die "some services are not healthy (above); see $LOG_DIR/<service>/ and fix, then ./restart.sh"
fi
ok "setup complete"
