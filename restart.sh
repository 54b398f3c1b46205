#!/usr/bin/env bash
# Restart the Aether services (configuration re-rendered first), or only the named ones.
#   ./restart.sh              the services (orchestrator, AI core, dashboard, agents); PostgreSQL and NATS stay up
#   ./restart.sh all          everything, PostgreSQL and NATS included
#   ./restart.sh NAME...      those programs (names: ./restart.sh --list)
# Starts the whole stack when it is not running.
set -euo pipefail
source "$(dirname "$0")/scripts/lib/common.sh"
source "$AETHER_ROOT/scripts/lib/stack.sh"
cd "$AETHER_ROOT"
need_venv
[ -f "$CREDENTIALS" ] || die "no $CREDENTIALS: run ./setup.sh first"

case "${1:-}" in
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --list) stack_names; exit 0 ;;
esac

if ! supervisor_running; then
    say "the stack is not running: starting it"
    rc=0; stack_start || rc=$?
    print_summary
    exit "$rc"
fi

all=$(stack_names)
if [ $# -eq 0 ]; then targets=$(stack_names --apps)
elif [ "$1" = all ]; then targets=$all
else
    for name in "$@"; do
        [[ " $all " == *" $name "* ]] || die "no program '$name' (programs: $all)"
    done
    targets="$*"
fi

start_infra  # re-render; supervisord restarts programs whose configuration changed
for name in $targets; do
    case $name in postgres|nats) ;; *) continue ;; esac
    say "restarting $name"
    sv restart "$name" >/dev/null || { log_tail "$name"; die "$name did not restart"; }
done
if [[ " $targets " == *" postgres "* ]]; then wait_postgres; fi
apps=""
for name in $targets; do case $name in postgres|nats) ;; *) apps="$apps $name" ;; esac; done
if [ -n "${apps// }" ]; then
    [[ " $apps " == *" orchestrator "* ]] && migrate
    say "restarting$apps"
    # shellcheck disable=SC2086
    sv restart $apps >/dev/null || true  # health decides below
fi
rc=0
"$PY" scripts/health.py --timeout "${AETHER_HEALTH_TIMEOUT:-90}" $targets || rc=$?
for name in $targets; do
    sv status "$name" 2>/dev/null | grep -q RUNNING || { warn "$name is not running"; log_tail "$name"; rc=1; }
done
[ "$rc" -eq 0 ] && ok "restarted:$(printf ' %s' $targets)"
exit "$rc"
