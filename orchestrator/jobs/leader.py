"""One scheduler at a time across orchestrator replicas: a PostgreSQL session advisory lock held on a connection
of its own. The lock goes with the session, so a crashed or cut-off leader loses it and a standby takes over
within a check interval; `fence` gives the statement by which a transaction proves, inside itself, that the lease is still held."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from orchestrator.errors import OrchestratorError
from orchestrator.jobs.db import DB_ERRORS

log = logging.getLogger("aether.jobs.leader")

# pg_try_advisory_lock(int, int): shows in pg_locks as classid = KEY1, objid = KEY2, objsubid = 2.
KEY1, KEY2 = 0x41657468, 0x63686564  # "Aeth", "ched"
# The error a fenced transaction fails with when the lease is gone (a code of our own, class "AE").
FENCE_SQLSTATE = "AEL01"


class NotLeader(OrchestratorError):
    code = "CONFLICT"


class Lease:
    def __init__(self, dsn: str, *, check_s: float, name: str,
                 on_acquire: Callable[[], Awaitable[None]], on_lose: Callable[[], Awaitable[None]]) -> None:
        self.dsn = dsn
        self.check_s = check_s
        self.name = name
        self.on_acquire = on_acquire
        self.on_lose = on_lose
        self.conn: asyncpg.Connection | None = None
        self.backend_pid: int | None = None
        self.held = False

    async def run(self) -> None:
        try:
            while True:
                if self.held:
                    await self._check()
                else:
                    await self._try_acquire()
                await asyncio.sleep(self.check_s)
        finally:
            if self.held:
                await self._lose("stopping")
            await self._close()

    async def _try_acquire(self) -> None:
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=5, server_settings={
                    "application_name": f"aether-scheduler-lease:{self.name}",
                    # A leader cut off by the network must lose the lock in seconds, not hours.
                    "tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"})
                self.backend_pid = self.conn.get_server_pid()
            got = await self.conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", KEY1, KEY2)
        except DB_ERRORS as exc:
            log.debug("lease not acquired: database unavailable", extra={"error": repr(exc)})
            await self._close()
            return
        if got:
            self.held = True
            log.info("scheduler lease acquired: this replica schedules", extra={"replica": self.name})
            try:
                await self.on_acquire()
            except Exception:
                log.exception("starting as leader failed; giving the lease back")
                await self._lose("start failed")
                await self._close()

    async def _check(self) -> None:
        try:
            await self.conn.fetchval("SELECT 1", timeout=max(1.0, self.check_s * 2))
        except (*DB_ERRORS, AttributeError) as exc:
            await self._lose(f"lease connection failed: {exc.__class__.__name__}")
            await self._close()

    async def _lose(self, why: str) -> None:
        if not self.held:
            return
        self.held = False
        log.warning("scheduler lease lost: this replica stops scheduling", extra={"replica": self.name, "why": why})
        try:
            await self.on_lose()
        except Exception:
            log.exception("stopping as leader failed")

    async def _close(self) -> None:
        if self.conn is not None:
            # terminate, not close: no round trip to a server that may be gone; the session (and the lock with
            # it) ends when the socket does.
            with contextlib.suppress(Exception):
                self.conn.terminate()
            self.conn = None
            self.backend_pid = None

    def fence(self) -> str:
        """A statement for the start of a transaction that fails it (FENCE_SQLSTATE, which `not_leader` recognises)
        unless our lease session still holds the lock; raises NotLeader at once when we know it is gone. Sent with
        BEGIN (orchestrator/jobs/db.py `transaction`), it proves the lease at no round trip of its own."""
        return (f"DO $$BEGIN IF NOT {self.held_condition()} THEN RAISE EXCEPTION "
                f"'scheduler lease not held' USING ERRCODE = '{FENCE_SQLSTATE}'; END IF; END$$")

    def held_condition(self) -> str:
        """The fence as an SQL condition, for a statement that writes only if it holds (`store.write_if_unchanged`);
        raises NotLeader at once when we know the lease is gone."""
        pid = self.backend_pid
        if not self.held or pid is None:
            raise NotLeader("this replica no longer holds the scheduler lease")
        return (f"EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = {KEY1} AND objid = {KEY2} "
                f"AND objsubid = 2 AND pid = {int(pid)} AND granted)")


def not_leader(exc: BaseException) -> bool:
    """Whether a database error is the fence's: this replica no longer holds the lease."""
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) == FENCE_SQLSTATE
