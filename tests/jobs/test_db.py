"""The hot loops' transactions (orchestrator/jobs/db.py `transaction`) and the scheduler lease's fence, against a
real PostgreSQL: BEGIN travels with the first statement, failures roll back or drop the connection, and a fenced
transaction fails once the lease is gone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import asyncpg
import pytest

from orchestrator.errors import DatabaseUnavailable
from orchestrator.jobs import db
from orchestrator.jobs.leader import KEY1, KEY2, Lease, NotLeader, not_leader


@pytest.fixture
async def rt(database_url):
    tx_pool = await asyncpg.create_pool(database_url, min_size=0, max_size=2, reset=db.keep_session)
    async with tx_pool.acquire() as conn:
        await conn.execute("CREATE TABLE t (v int)")
    ready = asyncio.Event()
    ready.set()
    yield SimpleNamespace(db_ready=ready, tx_pool=tx_pool, pool=tx_pool)
    await tx_pool.close()


async def _values(rt) -> list[int]:
    async with rt.tx_pool.acquire() as conn:
        return [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY v")]


async def test_first_statement_runs_inside_the_transaction_and_commit_releases_it(rt):
    async with db.transaction(rt, first="SELECT pg_advisory_xact_lock(4242)") as conn:
        assert conn.is_in_transaction()
        held = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 "
                                   "AND pid = pg_backend_pid()")
        assert held == 1  # taken by the statement sent with BEGIN, held until the end of the transaction
        await conn.execute("INSERT INTO t VALUES (1)")
        pid = conn.get_server_pid()
    assert await _values(rt) == [1]
    async with rt.tx_pool.acquire() as conn:
        assert conn.get_server_pid() == pid  # the same session, kept (no reset) and out of the transaction
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242") == 0


async def test_an_error_rolls_back_and_the_connection_is_reused(rt):
    with pytest.raises(ValueError):
        async with db.transaction(rt) as conn:
            await conn.execute("INSERT INTO t VALUES (2)")
            pid = conn.get_server_pid()
            raise ValueError("boom")
    assert await _values(rt) == []
    async with db.transaction(rt) as conn:
        assert conn.get_server_pid() == pid
        await conn.execute("INSERT INTO t VALUES (3)")
    assert await _values(rt) == [3]


async def test_a_cancelled_statement_drops_its_connection(rt):
    started = asyncio.Event()

    async def slow():
        async with db.transaction(rt) as conn:
            await conn.execute("INSERT INTO t VALUES (4)")
            slow.pid = conn.get_server_pid()
            started.set()
            await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _values(rt) == []
    async with db.transaction(rt) as conn:  # a fresh session: the interrupted one is never handed out again
        assert conn.get_server_pid() != slow.pid


async def test_a_database_that_is_not_ready_is_a_typed_error(rt):
    rt.db_ready.clear()
    with pytest.raises(DatabaseUnavailable):
        async with db.transaction(rt):
            pass


async def test_the_fence_passes_while_the_lease_is_held_and_fails_the_transaction_once_it_is_not(rt, database_url):
    holder = await asyncpg.connect(database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1, $2)", KEY1, KEY2)
        lease = Lease(database_url, check_s=1.0, name="test", on_acquire=None, on_lose=None)
        lease.held, lease.backend_pid = True, holder.get_server_pid()
        async with db.transaction(rt, first=lease.fence()) as conn:
            await conn.execute("INSERT INTO t VALUES (5)")
        await holder.execute("SELECT pg_advisory_unlock($1, $2)", KEY1, KEY2)  # the lease is gone
        with pytest.raises(asyncpg.PostgresError) as caught:
            async with db.transaction(rt, first=lease.fence()) as conn:
                await conn.execute("INSERT INTO t VALUES (6)")
        assert not_leader(caught.value)
        assert await _values(rt) == [5]
        lease.held = False  # known lost: refused before any round trip
        with pytest.raises(NotLeader):
            lease.fence()
    finally:
        await holder.close()
