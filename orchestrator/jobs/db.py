"""Database access for jobs: a connection or transaction whose 'PostgreSQL is down' becomes the typed 503, and the
lean transactions of the hot loops (admission batches, scheduler commits, report batches)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from orchestrator.errors import DatabaseUnavailable
from orchestrator.runtime import DB_DOWN_ERRORS, Runtime

# Besides a refused or broken connection, a server shutting down answers with these.
DB_ERRORS = (*DB_DOWN_ERRORS, asyncpg.OperatorInterventionError, TimeoutError)
ROLLBACK_LIMIT_S = 2.0


@asynccontextmanager
async def _typed_errors(rt: Runtime) -> AsyncIterator[None]:
    """'PostgreSQL is down' (or not ready yet), however it shows, as the typed 503."""
    if not rt.db_ready.is_set():
        raise DatabaseUnavailable("database not ready yet (starting or migrating)")
    try:
        yield
    except DatabaseUnavailable:
        raise
    except DB_ERRORS as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc


@asynccontextmanager
async def connection(rt: Runtime, *, transaction: bool = False, timeout_s: float = 15.0
                     ) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection (in a transaction if asked); raises DatabaseUnavailable instead of hanging."""
    async with _typed_errors(rt), asyncio.timeout(timeout_s), rt.db() as conn:
        if transaction:
            async with conn.transaction():
                yield conn
        else:
            yield conn


async def keep_session(conn: asyncpg.Connection) -> None:
    """The transaction pool's reset: nothing to undo. Its connections only ever run `alone` and `transaction` below,
    which leave no session state behind (no LISTEN, session lock or setting), so asyncpg's reset query - one more round
    trip per transaction - would reset nothing. (asyncpg still rolls back a transaction left open.)"""


@asynccontextmanager
async def alone(rt: Runtime, *, timeout_s: float = 15.0) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the transaction pool (no reset round trip on release), for `transaction` below or for
    statements that are each their own transaction (each commits as it returns: one round trip in all). One
    interrupted mid-statement is closed, never reused. Raises DatabaseUnavailable instead of hanging."""
    pool = rt.tx_pool or rt.pool
    async with _typed_errors(rt), asyncio.timeout(timeout_s):
        conn = await pool.acquire()
        try:
            yield conn
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # (A connection `transaction` already closed has been detached by the pool: nothing to do.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    if not conn.is_closed():
                        conn.terminate()
            raise
        finally:
            await pool.release(conn)


@asynccontextmanager
async def transaction(rt: Runtime, *, first: str | None = None, timeout_s: float = 15.0
                      ) -> AsyncIterator[asyncpg.Connection]:
    """A transaction for the hot loops, in as few round trips as it can be: on the transaction pool (no reset on
    release), with BEGIN sent together with `first` (a statement without parameters, such as a lock or a fence),
    and COMMIT. Under load each round trip waits its turn on a busy event loop and a busy database, so the number
    of them, not the work, sets how long a batch takes. Raises DatabaseUnavailable instead of hanging."""
    async with alone(rt, timeout_s=timeout_s) as conn:
        try:
            await conn.execute(f"BEGIN; {first}" if first else "BEGIN")
            yield conn
            await conn.execute("COMMIT")
        except BaseException as exc:
            await _abandon(conn, interrupted=not isinstance(exc, Exception))
            raise


async def _abandon(conn: asyncpg.Connection, *, interrupted: bool) -> None:
    """Roll back a failed transaction. A connection that cannot roll back (broken), or whose statement was
    interrupted (the task was cancelled: the server may still be running it), is closed instead, never handed to
    the next transaction. Never raises: the caller re-raises what went wrong."""
    if conn.is_closed():
        return
    if not interrupted:
        try:
            async with asyncio.timeout(ROLLBACK_LIMIT_S):
                if conn.is_in_transaction():
                    await conn.execute("ROLLBACK")
            return
        except Exception:
            pass
    conn.terminate()
