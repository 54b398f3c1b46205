#!/usr/bin/env bash
# Lint (ruff) and the whole test suite (pytest); arguments go to pytest: ./test.sh -k ingest -x
# Exits non-zero when either fails. The tests start the nats-server and PostgreSQL they need themselves.
set -uo pipefail
source "$(dirname "$0")/scripts/lib/common.sh"
cd "$AETHER_ROOT"
need_venv

say "ruff check ."
lint=0
"$VENV/bin/ruff" check . || lint=$?

say "pytest $*"
tests=0
"$VENV/bin/pytest" "$@" || tests=$?

if [ "$lint" -ne 0 ]; then
    echo "ruff check failed (exit $lint): see above" >&2
    exit "$lint"
fi
exit "$tests"
