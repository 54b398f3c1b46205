"""Database access for jobs: a connection or transaction whose 'PostgreSQL is down' becomes the typed 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from orchestrator.errors import DatabaseUnavailable
from orchestrator.runtime import DB_DOWN_ERRORS, Runtime

# Besides a refused or broken connection, a server shutting down answers with these.
DB_ERRORS = (*DB_DOWN_ERRORS, asyncpg.OperatorInterventionError, TimeoutError)


@asynccontextmanager
async def connection(rt: Runtime, *, transaction: bool = False, timeout_s: float = 15.0
                     ) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection (in a transaction if asked); raises DatabaseUnavailable instead of hanging."""
    if not rt.db_ready.is_set():
        raise DatabaseUnavailable("database not ready yet (starting or migrating)")
    try:
        async with asyncio.timeout(timeout_s), rt.db() as conn:
            if transaction:
                async with conn.transaction():
                    yield conn
            else:
                yield conn
    except DatabaseUnavailable:
        raise
    except DB_ERRORS as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
