"""Nothing lost, nothing stored twice: across a SIGKILL of the orchestrator mid-stream, and with two replicas
sharing the durable consumer."""

from __future__ import annotations

import asyncio

from tests.ingest.support import batches, metric_value, publish, stored, until

GPUS = 4


async def test_kill_9_mid_stream_loses_and_duplicates_nothing(nats_server, database_url, unique_node, start_orch):
    # A short ack wait so the killed process's unacked messages come back quickly to its successor; small
    # transactions so the backlog takes a while: the whole of it is delivered (and held) long before it is stored.
    items = batches(unique_node, 800, GPUS)
    expected = len(items) * GPUS
    await publish(nats_server.url, items[:600])
    first = start_orch(nats_server.url, database_url, ingest_ack_wait_s=2, ingest_write_max_msgs=2, ingest_writers=1)
    await until(lambda: _any_stored(database_url, unique_node), 30, "the first orchestrator to store something",
                interval=0.01)
    first.kill()  # SIGKILL: no drain, no final acks
    n_at_kill, _ = await stored(database_url, unique_node)
    assert 0 < n_at_kill < 600 * GPUS, "the kill should land in the middle of the backlog"
    await publish(nats_server.url, items[600:])  # the stream keeps filling while no orchestrator runs

    second = start_orch(nats_server.url, database_url, ingest_ack_wait_s=2)
    await until(lambda: _all_stored(database_url, unique_node, expected), 60, f"{expected} samples stored")
    n, distinct = await stored(database_url, unique_node)
    assert n == distinct == expected
    # The successor really did get messages the killed process had been holding.
    assert await metric_value(second.url, "aether_ingest_redelivered_messages_total") > 0


async def test_two_replicas_share_the_consumer(nats_server, database_url, unique_node, start_orch):
    small = dict(ingest_write_max_msgs=20, ingest_credit=64, ingest_batch=16)  # neither can take it all at once
    a, b = await asyncio.gather(asyncio.to_thread(start_orch, nats_server.url, database_url, **small),
                                asyncio.to_thread(start_orch, nats_server.url, database_url, **small))
    items = batches(unique_node, 500, GPUS)
    expected = len(items) * GPUS
    await publish(nats_server.url, items)
    await until(lambda: _all_stored(database_url, unique_node, expected), 60, f"{expected} samples stored")
    n, distinct = await stored(database_url, unique_node)
    assert n == distinct == expected
    by_a = await metric_value(a.url, "aether_ingest_samples_total")
    by_b = await metric_value(b.url, "aether_ingest_samples_total")
    assert by_a > 0 and by_b > 0, f"both replicas should have stored part: {by_a} / {by_b}"
    assert by_a + by_b == expected


async def _any_stored(dsn: str, node: str) -> bool:
    n, _ = await stored(dsn, node)
    return n > 0


async def _all_stored(dsn: str, node: str, expected: int) -> bool:
    n, _ = await stored(dsn, node)
    return n == expected
