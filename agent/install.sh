#!/usr/bin/env bash
# Install the Aether node agent as a systemd service on a GPU host.
#
#   sudo agent/install.sh --nats nats://HOST:4222 [--node NAME] [--user NATS_USER --password-file FILE]
#                         [--prefix /opt/aether] [--simulated] [--http-host 0.0.0.0] [--dry-run]
#
# Creates a virtual environment under the prefix, installs this checkout into it, writes the connection
# settings to /etc/aether/agent.env (mode 0600: it holds the NATS password) and a unit file
# /etc/systemd/system/aether-agent.service, then enables and starts the service. Jobs run as the
# unprivileged user `nobody` (AGENT_JOB_USER); the agent keeps its state in /var/lib/aether-agent.
# Running it again updates the installation in place.
set -euo pipefail

NATS_URL=""
NODE="$(hostname -s | tr -c 'A-Za-z0-9_\n-' '-')"
NATS_USER=""
PASSWORD_FILE=""
PREFIX="/opt/aether"
SIMULATED=0
HTTP_HOST="127.0.0.1"
DRY_RUN=0
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --nats) NATS_URL="$2"; shift 2 ;;
    --node) NODE="$2"; shift 2 ;;
    --user) NATS_USER="$2"; shift 2 ;;
    --password-file) PASSWORD_FILE="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --simulated) SIMULATED=1; shift ;;
    --http-host) HTTP_HOST="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done

[ -n "$NATS_URL" ] || die "--nats nats://HOST:4222 is required"
[[ "$NODE" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "node name '$NODE' must match ^[A-Za-z0-9_-]{1,64}$ (use --node)"
[ "$DRY_RUN" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (it writes /etc and a systemd unit)"
command -v python3 >/dev/null || die "python3 (3.11 or newer) is required"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 must be 3.11 or newer"

NATS_PASSWORD=""
if [ -n "$PASSWORD_FILE" ]; then
  [ -r "$PASSWORD_FILE" ] || die "cannot read $PASSWORD_FILE"
  NATS_PASSWORD="$(head -n1 "$PASSWORD_FILE")"
fi

if [ "$SIMULATED" = 0 ] && ! command -v nvidia-smi >/dev/null; then
  echo "install.sh: warning: nvidia-smi not found; the agent will refuse to start without a GPU (--simulated?)" >&2
fi

run() { if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi; }

ENV_FILE=/etc/aether/agent.env
UNIT=/etc/systemd/system/aether-agent.service
STATE=/var/lib/aether-agent

run install -d -m 0755 "$PREFIX" /etc/aether
run install -d -m 0711 "$STATE"
run python3 -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
run "$PREFIX/venv/bin/pip" install --quiet "$SRC"

ENV_TEXT="# Aether agent settings (see agent/README.md); read by systemd, never by jobs.
NATS_URL=$NATS_URL
AGENT_NODE=$NODE
AGENT_WORK_DIR=$STATE
AGENT_HTTP_HOST=$HTTP_HOST
AGENT_JOB_USER=nobody
AGENT_SIMULATED=$([ "$SIMULATED" = 1 ] && echo true || echo false)"
[ -n "$NATS_USER" ] && ENV_TEXT="$ENV_TEXT
NATS_USER=$NATS_USER"
[ -n "$NATS_PASSWORD" ] && ENV_TEXT="$ENV_TEXT
NATS_PASSWORD=$NATS_PASSWORD"

UNIT_TEXT="[Unit]
Description=Aether GPU node agent ($NODE)
Documentation=file://$SRC/agent/README.md
After=network-online.target nvidia-persistenced.service
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=$ENV_FILE
ExecStart=$PREFIX/venv/bin/python -m agent
WorkingDirectory=$STATE
Restart=always
RestartSec=2
# SIGTERM to the agent only: it stops its jobs itself (reported LOST, re-queued) within the stop timeout.
KillMode=mixed
TimeoutStopSec=60
LimitNOFILE=65536
ProtectSystem=full
ProtectHome=read-only
PrivateTmp=true

[Install]
WantedBy=multi-user.target"

if [ "$DRY_RUN" = 1 ]; then
  echo "--- $ENV_FILE"; echo "$ENV_TEXT" | sed 's/^NATS_PASSWORD=.*/NATS_PASSWORD=(hidden)/'
  echo "--- $UNIT"; echo "$UNIT_TEXT"
  exit 0
fi

umask 077
printf '%s\n' "$ENV_TEXT" > "$ENV_FILE"
chmod 0600 "$ENV_FILE"
umask 022
printf '%s\n' "$UNIT_TEXT" > "$UNIT"
systemctl daemon-reload
systemctl enable --now aether-agent.service
systemctl restart aether-agent.service
echo "aether-agent installed for node $NODE: systemctl status aether-agent; journalctl -u aether-agent -f"
