"""PostgreSQL goes away under a running orchestrator: it keeps serving, stops acking, retries with back-off, and
stores everything once the database is back (here on plain PostgreSQL, so that path runs end to end too)."""

from __future__ import annotations

from datetime import timedelta

import nats
import pytest

from services import subjects
from services.localstack import Postgres
from tests.ingest.support import batches, get, metric_value, publish, stored, until

GPUS = 2


@pytest.fixture
def own_pg():
    """A PostgreSQL of this test's own: it is stopped and started again, which the session one must not be."""
    server = Postgres(timescale=False).start()
    yield server
    server.cleanup()


async def test_catches_up_after_postgres_restart(nats_server, own_pg, unique_node, start_orch):
    dsn = own_pg.create_database("outage")
    orch = start_orch(nats_server.url, dsn, ingest_ack_wait_s=3)
    before = batches(unique_node, 50, GPUS)
    await publish(nats_server.url, before)
    await until(lambda: _count_is(dsn, unique_node, len(before) * GPUS), 30, "the first samples stored")

    own_pg.stop()
    during = batches(unique_node, 80, GPUS, seq0=50, start=before[-1].time)
    during = during[1:]  # the first would repeat the last tick's time
    await publish(nats_server.url, during)

    # Still serving, and retrying: the write errors count up while nothing is acked.
    assert (await get(f"{orch.url}/health")).status_code == 200
    await until(lambda: _errors_at_least(orch.url, 2), 30, "ingest to retry the write")
    ack_pending = await _ack_pending(nats_server.url)
    assert ack_pending > 0, "messages must stay unacked while the database is down"
    # Longer than the ack wait: the held messages are kept alive (+WPI), not redelivered to pile up.
    await until(lambda: _errors_at_least(orch.url, 6), 30, "more retries, spanning the ack wait")

    own_pg.start()
    total = (len(before) + len(during)) * GPUS
    await until(lambda: _count_is(dsn, unique_node, total), 60, f"all {total} samples stored after the restart")
    n, distinct = await stored(dsn, unique_node)
    assert n == distinct == total
    await until(lambda: _ack_pending_is_zero(nats_server.url), 20, "every message acked")
    body = (await get(f"{orch.url}/v1/health")).json()
    assert body["database"]["storage"] == "postgresql"


async def _errors_at_least(url: str, n: int) -> bool:
    return await metric_value(url, "aether_ingest_db_errors_total") >= n


async def _count_is(dsn: str, node: str, n: int) -> bool:
    return (await stored(dsn, node))[0] == n


async def _ack_pending(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(subjects.TELEMETRY_STREAM, "aether-ingest")
        return info.num_ack_pending
    finally:
        await nc.close()


async def _ack_pending_is_zero(url: str) -> bool:
    return await _ack_pending(url) == 0


async def test_resumes_after_nats_restart(nats_server, database_url, unique_node, start_orch):
    """Pull requests do not survive a server restart: the feed notices the reconnect and asks again."""
    start_orch(nats_server.url, database_url)
    before = batches(unique_node, 20, GPUS)
    await publish(nats_server.url, before)
    await until(lambda: _count_is(database_url, unique_node, len(before) * GPUS), 30, "the first samples stored")
    nats_server.restart()  # same port, same file store
    after = batches(unique_node, 20, GPUS, seq0=20, start=before[-1].time + timedelta(seconds=1))
    await publish(nats_server.url, after)
    total = (len(before) + len(after)) * GPUS
    await until(lambda: _count_is(database_url, unique_node, total), 40, "the samples published after the restart")
    n, distinct = await stored(database_url, unique_node)
    assert n == distinct == total
