# shellcheck shell=bash
# Starting, restarting and stopping the stack under supervisord: PostgreSQL and NATS first, then the
# database role, migrations, the services, health checks and a first model. Sourced after common.sh.

sv() { "$VENV/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"; }

supervisor_running() {
    [ -f "$SUPERVISOR_CONF" ] && [ -S "$RUN_DIR/supervisor.sock" ] || return 1
    sv pid 2>/dev/null | grep -qE '^[0-9]+$'
}

stack_names() { "$PY" "$AETHER_ROOT/scripts/stack.py" names "$@"; }

log_tail() {
    local f="$LOG_DIR/$1/$1.log"
    [ -f "$f" ] || return 0
    echo "---- last lines of $f ----" >&2
    tail -n "${2:-25}" "$f" >&2
    echo "----" >&2
}

conf_sum() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

# Re-render both configurations; a running nats-server re-reads its own (users, permissions) on SIGHUP.
render_config() {
    local nats_conf="$STATE_DIR/nats/nats-server.conf" before
    before=$(conf_sum "$nats_conf")
    "$PY" "$AETHER_ROOT/scripts/render_config.py" >/dev/null
    if [ -n "$before" ] && [ "$before" != "$(conf_sum "$nats_conf")" ] && supervisor_running \
        && sv status nats 2>/dev/null | grep -q RUNNING; then
        sv signal HUP nats >/dev/null && ok "NATS configuration reloaded"
    fi
}

# As the PostgreSQL account: itself when we are not root (PostgreSQL only refuses root).
as_pg_user() {
    if is_root; then setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups -- "$@"
    else "$@"; fi
}

# A new cluster: superuser `postgres` reachable only through the private socket folder (no password
# exists for it), password (SCRAM) logins over TCP for the application role created later.
pg_initdb() {
    [ -f "$PG_DATA/PG_VERSION" ] && return 0
    say "initialising PostgreSQL in $PG_DATA"
    as_pg_user "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C --data-checksums \
        --auth-local=trust --auth-host=scram-sha-256 --no-instructions >/dev/null
}

psql_super() {
    PGOPTIONS='-c client_min_messages=warning' \
        "$PG_BIN/psql" -X -q -h "$PG_SOCKET_DIR" -p "$PORT_POSTGRES" -U postgres -v ON_ERROR_STOP=1 "$@"
}

wait_postgres() {
    local i
    for i in $(seq 1 120); do
        "$PG_BIN/pg_isready" -q -h "$PG_SOCKET_DIR" -p "$PORT_POSTGRES" && return 0
        sleep 0.5
    done
    log_tail postgres 40
    die "PostgreSQL did not accept connections within 60 s (log: $LOG_DIR/postgres/)"
}

# Role and database of DATABASE_URL (not a superuser: it owns its database, nothing more), TimescaleDB.
pg_bootstrap() {
    local db_user db_name db_port db_pass esc preload have want
    { read -r db_user db_name db_port; read -r db_pass; } < <("$PY" "$AETHER_ROOT/scripts/credentials.py" db)
    [ "$db_port" = "$PORT_POSTGRES" ] || warn "DATABASE_URL names port $db_port; the local PostgreSQL listens on $PORT_POSTGRES"
    esc=${db_pass//\'/\'\'}
    # The password travels on stdin, never on a command line other users could read.
    psql_super -d postgres <<SQL
\\set db_user '$db_user'
\\set db_name '$db_name'
\\set db_pass '$esc'
SELECT format('CREATE ROLE %I LOGIN', :'db_user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'db_user') \\gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'db_user', :'db_pass') \\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db_name', :'db_user') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db_name') \\gexec
-- Read-only: lets the migrations see shared_preload_libraries (whether TimescaleDB is loaded).
SELECT format('GRANT pg_read_all_settings TO %I', :'db_user') \\gexec
SQL
    preload=$(psql_super -d "$db_name" -At -c "SHOW shared_preload_libraries")
    if [[ "$preload" == *timescaledb* ]]; then
        psql_super -d "$db_name" -c "CREATE EXTENSION IF NOT EXISTS timescaledb"
        have=$(psql_super -d "$db_name" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        want=$(psql_super -d "$db_name" -At -c "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
        if [ -n "$have" ] && [ "$have" != "$want" ]; then
            say "updating the timescaledb extension $have -> $want"
            psql_super -d "$db_name" -c "ALTER EXTENSION timescaledb UPDATE"  # must be a session's first command
        fi
        ok "PostgreSQL $PORT_POSTGRES: database $db_name, role $db_user, TimescaleDB $want"
    else
        ok "PostgreSQL $PORT_POSTGRES: database $db_name, role $db_user (plain PostgreSQL, no TimescaleDB)"
    fi
}

# supervisord up with the current configuration; PostgreSQL and NATS running and answering.
start_infra() {
    render_config
    pg_initdb
    if supervisor_running; then
        # Applies configuration changes: programs whose section changed are restarted, new ones added.
        sv reread >/dev/null
        sv update >/dev/null
    else
        "$PY" "$AETHER_ROOT/scripts/ports.py" stop-strays
        local busy
        if ! busy=$("$PY" "$AETHER_ROOT/scripts/ports.py" busy); then
            printf '%s\n' "$busy" >&2
            die "ports Aether needs are in use (above). Stop what holds them, or ./stop.sh if it is an old Aether."
        fi
        say "starting supervisord ($SUPERVISOR_CONF)"
        "$VENV/bin/supervisord" -c "$SUPERVISOR_CONF"
        local i
        for i in $(seq 1 40); do supervisor_running && break; sleep 0.25; done
        supervisor_running || { log_tail supervisord; die "supervisord did not start"; }
    fi
    sv start postgres nats >/dev/null 2>&1 || true
    wait_postgres
    "$PY" "$AETHER_ROOT/scripts/health.py" --timeout 30 nats >/dev/null \
        || { log_tail nats 40; die "NATS did not become healthy within 30 s (log: $LOG_DIR/nats/)"; }
    ok "NATS $PORT_NATS (JetStream on, authentication on; monitoring http://127.0.0.1:$PORT_NATS_MONITOR)"
}

migrate() {
    "$PY" -c 'import orchestrator.migrate' 2>/dev/null || { warn "orchestrator.migrate not in this checkout yet: no migrations applied"; return 0; }
    say "applying migrations"
    (cd "$AETHER_ROOT" && "$PY" -m orchestrator.migrate 2>>"$LOG_DIR/migrate.log") \
        || { tail -n 20 "$LOG_DIR/migrate.log" >&2; die "migrations failed (log: $LOG_DIR/migrate.log)"; }
}

start_apps() {
    local names missing
    names=$(stack_names --apps)
    missing=$("$PY" "$AETHER_ROOT/scripts/stack.py" missing --apps | tr '\n' ' ')
    [ -n "${missing// }" ] && warn "not in this checkout yet, not started: $missing"
    [ -n "$names" ] || return 0
    say "starting $names"
    sv start $names >/dev/null 2>&1 || true  # already-running ones answer an error; health decides below
}

# Waits for every service's health URL; the orchestrator's /v1/health must answer.
check_health() {
    local names require=() rc=0 name
    names=$(stack_names)
    [[ " $names " == *" orchestrator "* ]] && require=(--require orchestrator)
    say "waiting for the services to be healthy"
    "$PY" "$AETHER_ROOT/scripts/health.py" --timeout "${AETHER_HEALTH_TIMEOUT:-90}" "${require[@]}" || rc=$?
    for name in $names; do
        sv status "$name" 2>/dev/null | grep -qE 'RUNNING' || { warn "$name is not running"; log_tail "$name"; }
    done
    return $rc
}

# The AI core's first model, when it reports none: trained in the background under supervisord (minutes of
# CPU); the AI core loads it as soon as it is announced, and placement uses the heuristic until then.
ensure_model() {
    [[ " $(stack_names --oneshot) " == *" ai_core-train "* ]] || return 0
    local version
    version=$("$PY" - "http://127.0.0.1:$PORT_AI_CORE/health" <<'PY' 2>/dev/null || true
import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1], timeout=3)).get("model_version") or "")
PY
)
    if [ -n "$version" ]; then ok "AI core model $version"; return 0; fi
    if sv status ai_core-train 2>/dev/null | grep -qE 'RUNNING|STARTING'; then
        ok "first placement model still training (log: $LOG_DIR/ai_core-train/)"; return 0
    fi
    sv start ai_core-train >/dev/null 2>&1 || { log_tail ai_core-train; warn "could not start the model training"; return 0; }
    ok "training the first placement model in the background (log: $LOG_DIR/ai_core-train/); placement uses the heuristic until the AI core loads it"
}

stack_start() {
    start_infra
    pg_bootstrap
    migrate
    start_apps
    local rc=0
    check_health || rc=$?
    ensure_model
    return $rc
}

stack_stop() {
    local busy
    if supervisor_running; then
        say "stopping every service, then NATS and PostgreSQL"
        local pid i
        pid=$(sv pid)
        sv shutdown >/dev/null || true
        # supervisord stops the programs (services first, PostgreSQL and NATS last) and then exits.
        for i in $(seq 1 240); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && warn "supervisord (pid $pid) still running after 120 s"
    fi
    [ -x "$PY" ] || return 0
    "$PY" "$AETHER_ROOT/scripts/ports.py" stop-strays
    if busy=$("$PY" "$AETHER_ROOT/scripts/ports.py" wait-free --timeout 30); then
        ok "stopped; ports $("$PY" "$AETHER_ROOT/scripts/stack.py" ports) are free"
    else
        printf '%s\n' "$busy" >&2
        if grep -q "(Aether's)" <<<"$busy"; then die "Aether processes still hold ports (above)"; fi
        warn "the ports above are held by processes that are not Aether's; left alone"
    fi
}

print_summary() {
    local token
    token=$(grep -E '^AETHER_API_TOKEN=' "$CREDENTIALS" | cut -d= -f2-)
    cat <<EOF

${_B}Aether${_N}
  dashboard      http://127.0.0.1:$PORT_DASHBOARD
  orchestrator   http://127.0.0.1:$PORT_ORCHESTRATOR   (HTTP API; /v1/health, /v1/gpus, /metrics)
  AI core        http://127.0.0.1:$PORT_AI_CORE
  NATS           nats://127.0.0.1:$PORT_NATS     (monitoring http://127.0.0.1:$PORT_NATS_MONITOR)
  PostgreSQL     127.0.0.1:$PORT_POSTGRES, database from DATABASE_URL
  agents         $("$PY" "$AETHER_ROOT/scripts/stack.py" nodes) (HTTP from port $PORT_AGENT_FIRST)
  logs           $LOG_DIR/<service>/
  credentials    $CREDENTIALS (mode 600)
  API token      $token   (admin; viewer and operator tokens are in the credentials file)

  curl -H "Authorization: Bearer \$AETHER_API_TOKEN" http://127.0.0.1:$PORT_ORCHESTRATOR/v1/gpus
  ./restart.sh [service]    ./stop.sh    $VENV/bin/supervisorctl -c $SUPERVISOR_CONF status
EOF
}
