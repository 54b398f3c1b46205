# shellcheck shell=bash
# Shared by setup.sh, restart.sh, stop.sh, test.sh and .ci/run: paths, ports, messages, running as root.
# Sourced, never executed; expects `set -euo pipefail` in the caller.

AETHER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE_DIR="$AETHER_ROOT/.aether"
VENV="$AETHER_ROOT/.venv"
PY="$VENV/bin/python"
CREDENTIALS="$STATE_DIR/credentials.env"
SUPERVISOR_CONF="$STATE_DIR/supervisord.conf"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/logs"
PG_DATA="$STATE_DIR/data/postgres"
PG_SOCKET_DIR="$RUN_DIR/postgres"
PG_BIN=${AETHER_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=${AETHER_PG_OS_USER:-aether}   # PostgreSQL refuses to run as root: it runs as this account then
SHARED_DIR=${AETHER_SHARED_DIR:-$(cd "$AETHER_ROOT/.." && pwd)/shared}

# Fixed ports of the single-machine stack (DESIGN.md "Running it").
PORT_POSTGRES=5432
PORT_NATS=4222
PORT_NATS_MONITOR=8222
PORT_ORCHESTRATOR=8080
PORT_AI_CORE=8000
PORT_DASHBOARD=3000
PORT_AGENT_FIRST=9501

if [ -t 1 ]; then _B=$'\033[1m'; _R=$'\033[31m'; _Y=$'\033[33m'; _G=$'\033[32m'; _N=$'\033[0m'
else _B=; _R=; _Y=; _G=; _N=; fi

say()  { printf '%s==>%s %s\n' "$_B" "$_N" "$*"; }
ok()   { printf '%s ok%s  %s\n' "$_G" "$_N" "$*"; }
warn() { printf '%swarn%s %s\n' "$_Y" "$_N" "$*" >&2; }
die()  { printf '%sfail%s %s\n' "$_R" "$_N" "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root: directly when we are root, through sudo otherwise (setup as a normal user).
as_root() {
    if is_root; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root for: $* (run as root, or install sudo)"; fi
}

can_be_root() { is_root || { command -v sudo >/dev/null 2>&1 && { [ -t 0 ] || sudo -n true 2>/dev/null; }; }; }

# Python >= 3.11 to build the venv with: $AETHER_PYTHON, else python3 if new enough, else python3.1x.
find_python() {
    local c
    for c in ${AETHER_PYTHON:-} python3 python3.13 python3.12 python3.11; do
        command -v "$c" >/dev/null 2>&1 || continue
        if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

need_venv() { [ -x "$PY" ] || die "no virtual environment at $VENV: run ./setup.sh first"; }
