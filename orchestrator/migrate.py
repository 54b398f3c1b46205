"""Numbered SQL migrations: applied once each, in order, under an advisory lock; `python -m orchestrator.migrate`.

`NNN_name.sql` is the migration; `NNN_name.timescale.sql` replaces it when TimescaleDB is active and
`NNN_name.plain.sql` when it is not. A file whose first line is `-- aether: no-transaction` runs statement
by statement outside a transaction (TimescaleDB continuous aggregates refuse transaction blocks).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("aether.migrate")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
NAME_RE = re.compile(r"^(\d{3})_([a-z0-9_]+?)(?:\.(timescale|plain))?\.sql$")
LOCK_KEY = 0x4165746865  # "Aethe": one migrator at a time across replicas


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def plan(directory: Path, timescale: bool) -> list[Migration]:
    """The migrations to consider, one per version, with the variant that fits the database."""
    by_version: dict[int, dict[str | None, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        m = NAME_RE.match(path.name)
        if not m:
            raise ValueError(f"migration file {path.name} does not match NNN_name[.timescale|.plain].sql")
        version = int(m.group(1))
        if version in names and names[version] != m.group(2):
            raise ValueError(f"two migrations share version {version:03d}: {names[version]} and {m.group(2)}")
        names[version] = m.group(2)
        by_version.setdefault(version, {})[m.group(3)] = path
    out = []
    for version in sorted(by_version):
        variants = by_version[version]
        path = variants.get("timescale" if timescale else "plain") or variants.get(None)
        if path is None:
            continue  # a migration only for the other storage flavour
        out.append(Migration(version, names[version], path))
    return out


def split_statements(sql: str) -> list[str]:
    """Split on semicolons that end a line; enough for our own migration files (no procedural bodies)."""
    parts = re.split(r";\s*(?:--[^\n]*)?\n", sql + "\n")
    return [p.strip() for p in parts if p.strip() and not all(
        line.strip().startswith("--") or not line.strip() for line in p.strip().splitlines())]


async def detect_timescale(conn: asyncpg.Connection) -> bool:
    """TimescaleDB is used when the extension is installed and preloaded; created here if need be."""
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not available:
        return False
    preload = await conn.fetchval("SHOW shared_preload_libraries")
    if "timescaledb" not in (preload or ""):
        log.warning("timescaledb is installed but not in shared_preload_libraries: using plain PostgreSQL")
        return False
    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return True


async def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is not applied yet; returns the names applied now. Safe to run from several replicas."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version integer PRIMARY KEY, name text NOT NULL, variant text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now());
                CREATE TABLE IF NOT EXISTS aether_meta (key text PRIMARY KEY, value text NOT NULL);
            """)
            stored = await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'storage'")
            if stored is None:
                timescale = await detect_timescale(conn)
                await conn.execute("INSERT INTO aether_meta VALUES ('storage', $1)",
                                   "timescaledb" if timescale else "postgresql")
            else:
                # The flavour is chosen once: a schema built for one cannot silently switch to the other.
                timescale = stored == "timescaledb"
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for mig in plan(directory, timescale):
                if mig.version in done:
                    continue
                sql = mig.path.read_text()
                variant = mig.path.name.split(".")[-2] if mig.path.name.count(".") == 2 else "common"
                if sql.lstrip().startswith("-- aether: no-transaction"):
                    for stmt in split_statements(sql):
                        await conn.execute(stmt)
                    await conn.execute("INSERT INTO schema_migrations (version, name, variant) VALUES ($1,$2,$3)",
                                       mig.version, mig.name, variant)
                else:
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name, variant) VALUES ($1,$2,$3)",
                            mig.version, mig.name, variant)
                log.info("migration applied", extra={"version": mig.version, "migration": mig.name,
                                                     "variant": variant})
                applied_now.append(f"{mig.version:03d}_{mig.name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
    return applied_now


async def storage_flavour(conn: asyncpg.Connection | asyncpg.Pool) -> str:
    return await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'storage'") or "unknown"


def main(argv: list[str] | None = None) -> int:
    from orchestrator.settings import OrchestratorSettings
    from services import jsonlog

    parser = argparse.ArgumentParser(description="Apply Aether's database migrations.")
    parser.add_argument("--database-url", help="defaults to DATABASE_URL / settings")
    args = parser.parse_args(argv)
    dsn = args.database_url or OrchestratorSettings.load().database_url
    jsonlog.configure("migrate")
    applied = asyncio.run(apply_migrations(dsn))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
