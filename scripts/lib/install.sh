# shellcheck shell=bash
# Installing what Aether needs, each step a no-op when already done: Debian packages (only the missing ones,
# never an upgrade), TimescaleDB from ../shared, the virtual environment, the dashboard's npm packages.
# Sourced after common.sh.

_APT_UPDATED=0

apt_update_once() {
    [ "$_APT_UPDATED" = 1 ] && return 0
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _APT_UPDATED=1
}

# "install ok installed", or "hold ok installed" once apt-mark hold pinned it.
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -qE '^(install|hold) ok installed$'; }

# Install the named Debian packages that are not installed yet; installed ones are never touched
# (--no-upgrade guards a named one; the apt-mark hold in ensure_timescaledb guards PostgreSQL's libraries).
apt_install_missing() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get: install them by hand"
    can_be_root || die "missing packages ${missing[*]}: run as root or with sudo"
    apt_update_once
    say "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-upgrade --no-install-recommends "${missing[@]}"
}

# Debian's chromium, which the browser tests drive through Playwright (executable_path; no browser download).
ensure_test_browser() {
    if [ -x /usr/bin/chromium ]; then return 0; fi
    if ! command -v dpkg-query >/dev/null 2>&1; then
        warn "no /usr/bin/chromium: the browser tests will be skipped (set AETHER_CHROMIUM to a Chromium binary)"
        return 0
    fi
    apt_install_missing chromium fonts-liberation
}

# python3-venv on Debian/Ubuntu: needed when `python -m venv` cannot bootstrap pip.
ensure_python_venv_support() {
    local py=$1
    "$py" -c 'import ensurepip, venv' 2>/dev/null && return 0
    local minor
    minor=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if apt-cache show "python$minor-venv" >/dev/null 2>&1; then apt_install_missing "python$minor-venv"
    else apt_install_missing python3-venv; fi
}

# PostgreSQL 15 from the distribution, only when missing. A package install would create and start a
# "main" cluster on 5432 (the port Aether's own cluster uses): preseed postgresql-common not to, and drop
# a main cluster only if this very install created it.
ensure_postgresql() {
    if pkg_installed postgresql-15 && [ -x "$PG_BIN/postgres" ]; then
        ok "PostgreSQL 15 installed ($("$PG_BIN/postgres" --version | awk '{print $3}'); left as it is)"
        return 0
    fi
    can_be_root || die "PostgreSQL 15 is missing: run ./setup.sh as root or with sudo to install postgresql-15"
    local had_main=0
    [ -d /etc/postgresql/15/main ] && had_main=1
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        as_root mkdir -p /etc/postgresql-common
        echo 'create_main_cluster = false' | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    apt_install_missing postgresql-15
    if [ "$had_main" = 0 ] && [ -d /etc/postgresql/15/main ] && command -v pg_dropcluster >/dev/null 2>&1; then
        say "dropping the empty 15/main cluster the package just created (Aether runs its own on $PORT_POSTGRES)"
        as_root pg_dropcluster --stop 15 main || warn "could not drop cluster 15/main: it may hold port $PORT_POSTGRES"
    fi
}

timescaledb_installed_version() {
    local control
    control="$("$PG_BIN/pg_config" --sharedir 2>/dev/null)/extension/timescaledb.control"
    [ -f "$control" ] && [ -f "$("$PG_BIN/pg_config" --pkglibdir)/timescaledb.so" ] || return 1
    sed -n "s/^default_version = '\(.*\)'/\1/p" "$control"
}

# TimescaleDB: the prebuilt bundle in ../shared/timescaledb when present (these machines), otherwise an
# extension already installed, otherwise plain PostgreSQL with a line saying so.
ensure_timescaledb() {
    local bundle want have tmp
    bundle=$(ls "$SHARED_DIR"/timescaledb/timescaledb-*-pg15-amd64.tar.gz 2>/dev/null | sort -V | tail -n 1 || true)
    have=$(timescaledb_installed_version || true)
    if [ -n "$bundle" ]; then
        want=$(basename "$bundle" | sed -n 's/^timescaledb-\(.*\)-pg15-amd64\.tar\.gz$/\1/p')
        if [ "$have" = "$want" ]; then
            ok "TimescaleDB $have installed"
        elif ! can_be_root; then
            warn "TimescaleDB bundle $want found but installing it needs root (sudo); continuing with ${have:-plain PostgreSQL}"
        else
            say "installing TimescaleDB $want from $bundle"
            tmp=$(mktemp -d)
            tar -xzf "$bundle" -C "$tmp"
            as_root env PG_CONFIG="$PG_BIN/pg_config" "$tmp/timescaledb-bundle/install.sh"
            rm -rf "$tmp"
            have=$(timescaledb_installed_version || true)
        fi
        # The bundle is built against 15.18; a newer 15.x breaks its background jobs (shared/timescaledb/README.md).
        if [ -n "$have" ] && can_be_root && command -v apt-mark >/dev/null 2>&1; then
            as_root apt-mark hold postgresql-15 postgresql-client-15 libpq5 >/dev/null 2>&1 || true
        fi
    elif [ -n "$have" ]; then
        ok "TimescaleDB $have installed"
    fi
    if [ -z "$have" ]; then
        say "TimescaleDB is not installed: Aether will run on plain PostgreSQL (native partitioning instead of hypertables)"
    fi
}

# The venv, and `pip install -e .[dev]` again only when pyproject.toml changed since the last install.
ensure_venv() {
    local py stamp want
    if [ ! -x "$PY" ]; then
        py=$(find_python) || die "Python 3.11 or newer is required (set AETHER_PYTHON=/path/to/python3.11)"
        ensure_python_venv_support "$py"
        say "creating virtual environment $VENV with $("$py" --version)"
        "$py" -m venv "$VENV"
    fi
    stamp="$VENV/.aether-installed"
    want=$(sha256sum "$AETHER_ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c 'import services, supervisor, nats' 2>/dev/null; then
        ok "Python packages up to date"
        return 0
    fi
    say "pip install -e '.[dev]'"
    "$PY" -m pip install -q -e "$AETHER_ROOT[dev]"
    echo "$want" > "$stamp"
}

# The dashboard's browser libraries (uPlot) come from npm when dashboard/package.json exists.
ensure_dashboard_packages() {
    local dir="$AETHER_ROOT/dashboard" stamp want
    [ -f "$dir/package.json" ] || return 0
    command -v npm >/dev/null 2>&1 || apt_install_missing nodejs npm
    stamp="$dir/node_modules/.aether-installed"
    want=$(cat "$dir/package.json" "$dir/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        ok "dashboard npm packages up to date"
        return 0
    fi
    say "npm packages for the dashboard"
    if [ -f "$dir/package-lock.json" ]; then (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    else (cd "$dir" && npm install --no-audit --no-fund --loglevel=error); fi
    echo "$want" > "$stamp"
}
