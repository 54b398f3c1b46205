"""A malformed telemetry message is counted, logged with its subject, copied to aether.deadletter.telemetry and
acked: it never blocks the messages behind it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import nats

from services import subjects
from tests.ingest.support import batch, metric_value, publish, stored, until


async def test_malformed_messages_are_dead_lettered_and_acked(nats_server, database_url, unique_node, start_orch,
                                                             output_dir):
    orch = start_orch(nats_server.url, database_url)
    nc = await nats.connect(nats_server.url)
    letters: list = []

    async def on_letter(msg):
        letters.append(msg)

    await nc.subscribe(subjects.DEADLETTER_TELEMETRY, cb=on_letter)
    await nc.flush()

    now = datetime.now(UTC)
    good = batch(unique_node, 1, now)
    wrong_node = batch("someone-else", 2, now)
    out_of_range = json.loads(batch(unique_node, 3, now).to_bytes())
    out_of_range["samples"][0]["util_gpu_pct"] = 250
    nul = json.loads(batch(unique_node, 4, now + timedelta(seconds=1)).to_bytes())
    nul["samples"][0]["error"] = "bad\u0000byte"
    future = batch(unique_node, 5, now + timedelta(hours=2))
    # Valid by the schema, but beyond what the columns hold (int32, float32): the database refuses them.
    too_big_int = batch(unique_node, 6, now + timedelta(seconds=2), retired_pages=2**40)
    too_big_float = batch(unique_node, 7, now + timedelta(seconds=3), temp_c=1e39)
    subject = subjects.telemetry(unique_node)
    bad = [(subject, b"{not json"),
           (subject, wrong_node.to_bytes()),  # a sample batch that claims another node than its subject
           (subject, json.dumps(out_of_range).encode()),
           (subject, json.dumps(nul).encode()),
           (subject, future.to_bytes()),  # dated two hours ahead: a broken clock, not data to keep
           (subject, too_big_int.to_bytes()),
           (subject, too_big_float.to_bytes())]
    also_good = batch(unique_node, 8, now + timedelta(seconds=4))
    await publish(nats_server.url, [*bad, good, also_good])

    await until(lambda: _count_is(database_url, unique_node, 2 * len(good.samples)), 30, "the good messages stored")
    await until(lambda: _is(len(letters) == len(bad)), 10, f"{len(bad)} dead letters")
    assert all(m.headers["Aether-Original-Subject"] == subject for m in letters)
    reasons = [m.headers["Aether-Reason"] for m in letters]
    assert any("someone-else" in r for r in reasons)
    assert any("util_gpu_pct" in r for r in reasons)
    assert any("NUL" in r for r in reasons)
    assert any("ahead" in r for r in reasons)
    assert sum("database refused" in r for r in reasons) == 2
    assert {m.data for m in letters} == {data for _, data in bad}  # the original bytes, untouched
    assert await metric_value(orch.url, "aether_ingest_malformed_total") == len(bad)

    # Acked: nothing of them waits for redelivery.
    info = await nc.jetstream().consumer_info(subjects.TELEMETRY_STREAM, "aether-ingest")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    # Kept a week in a stream of their own, for whoever wants to look.
    dl = await nc.jetstream().stream_info("AETHER_DEADLETTER")
    assert dl.state.messages == len(bad)
    await nc.close()

    logged = [json.loads(line) for line in orch.log_path.read_text().splitlines() if "dead-lettered" in line]
    assert len(logged) == len(bad)
    assert all(rec["subject"] == subject and rec["level"] == "warning" for rec in logged)


async def _is(value: bool) -> bool:
    await asyncio.sleep(0)
    return value


async def _count_is(dsn: str, node: str, n: int) -> bool:
    return (await stored(dsn, node))[0] == n
