#!/bin/sh
# First start of the timescaledb container: the application role `aether` (not a superuser) owning the
# database `aether`, as ./setup.sh does on a machine. The image's own script has created the extension.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
\set db_pass '$AETHER_DB_PASSWORD'
SELECT format('CREATE ROLE aether LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'db_pass') \gexec
ALTER DATABASE "$POSTGRES_DB" OWNER TO aether;
GRANT pg_read_all_settings TO aether;
SQL
