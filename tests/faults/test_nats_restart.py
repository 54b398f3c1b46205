"""nats-server goes away for a few seconds and comes back on the same port with its JetStream file store: agents
and the orchestrator reconnect by themselves; an agent loses no sample while its buffer holds, and exactly the
samples it counts as dropped once the buffer overflows; a job running across the outage finishes once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest

from tests.faults.support import (
    agent,
    aget,
    ametric,
    fetch,
    gaps,
    headers,
    job_in,
    node_name,
    start_orchestrator,
    stored_samples,
    telemetry_in_stream,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SMALL_BUFFER = 4  # batches agent B keeps while NATS is away (the default, 900, is 15 minutes at 1 Hz)
INTERVAL = 0.2


def _node(svc) -> str:
    return svc.args[svc.args.index("--node") + 1]


async def test_nats_restart_agents_and_orchestrator_reconnect(nats_server, database_url, output_dir):
    orch = await asyncio.to_thread(start_orchestrator, nats_server.url, database_url, output_dir / "orchestrator.log")
    roomy = agent(nats_server.url, node_name("roomy"), output_dir, interval=INTERVAL)
    tight = agent(nats_server.url, node_name("tight"), output_dir, interval=INTERVAL,
                  env={"AGENT_BUFFER_MAX_BATCHES": str(SMALL_BUFFER)})
    agents = [roomy, tight]
    await asyncio.gather(*(asyncio.to_thread(a.start) for a in agents))
    try:
        async with httpx.AsyncClient(base_url=orch.url, timeout=10, headers=headers()) as c:
            async def placeable():
                gpus = (await c.get("/v1/gpus")).json()
                return sum(1 for g in gpus if g["healthy"]) == 4

            await until(placeable, 30, "both agents' GPUs placeable")
            r = await c.post("/v1/jobs", json={"name": "across-the-outage", "command": ["sleep", "8"]})
            assert r.status_code == 201, r.text
            jid = r.json()["job_id"]
            await until(lambda: job_in(c, jid, "RUNNING"), 20, "the job running")

            # --- the outage: the server stops; the agents buffer, the tight one overflows -------------------
            await asyncio.to_thread(nats_server.stop)
            down_at = time.monotonic()
            # Longer than the orchestrator's heartbeat timeout (2.5 s here): the bus's silence must not pass for
            # the nodes' death.
            await until(lambda: _depth_at_least(roomy.url, 4.0 / INTERVAL), 30, "the roomy agent buffering 4 s")
            await until(lambda: _at_least(ametric(tight.url, "aether_agent_buffer_dropped_total"), 3), 30,
                        "the tight agent dropping its oldest batches")
            assert (await c.get("/health")).status_code == 200  # the orchestrator serves on, without its bus
            assert (await c.get("/v1/health")).json()["nats"]["ok"] is False
            await asyncio.to_thread(nats_server.start)  # same port, same JetStream store
            outage_s = time.monotonic() - down_at

            # --- back: everyone reconnects without being restarted ----------------------------------------
            await until(lambda: _nats_ok(c), 30, "the orchestrator reconnected")
            for a in agents:
                await until(lambda a=a: _depth_is(a.url, 0), 30, f"{_node(a)}'s buffer drained")
                await until(lambda a=a: _health_ok(a.url), 30, f"{_node(a)} healthy again")
            # Commands flow again (request/reply to an agent, reports back through JetStream).
            r = await c.post("/v1/jobs", json={"name": "after-the-outage", "command": ["true"]})
            assert r.status_code == 201, r.text
            after = r.json()["job_id"]
            await until(lambda: job_in(c, after, "SUCCEEDED"), 30, "a job placed after the outage to succeed")
            done = await until(lambda: job_in(c, jid, "SUCCEEDED"), 30, "the job that ran across it")
        dropped = await ametric(tight.url, "aether_agent_buffer_dropped_total")
        await asyncio.gather(*(asyncio.to_thread(a.stop) for a in agents))  # SIGTERM: the agents flush

        # The job across the outage ran once and ended once; no node was declared lost for the bus's silence.
        assert done["attempt"] == 1 and done["lost_count"] == 0, done
        events = await fetch(database_url, "SELECT to_state FROM job_events WHERE job_id = $1 ORDER BY id", jid)
        assert [e["to_state"] for e in events].count("SUCCEEDED") == 1

        # Telemetry: what the agents published is exactly what the stream holds and the database stored.
        seen = {}
        for a in agents:
            node = _node(a)
            batches = await telemetry_in_stream(nats_server.url, node)
            seqs = [b["seq"] for b in batches]
            assert len(seqs) == len(set(seqs)), f"{node}: a batch stored twice in the stream"
            expected = sum(b["samples"] for b in batches)
            await until(lambda node=node, expected=expected: _rows_at_least(database_url, node, expected), 60,
                        f"{expected} samples of {node} stored")
            rows, distinct = await stored_samples(database_url, node)
            assert rows == distinct == expected, node
            seen[node] = {"batches": len(seqs), "missing_seqs": len(gaps(seqs)), "first": min(seqs),
                          "samples_stored": rows}
        assert seen[_node(roomy)]["missing_seqs"] == 0 and seen[_node(roomy)]["first"] == 0
        # The tight buffer lost exactly the batches it says it dropped: the oldest, nothing else.
        assert seen[_node(tight)]["missing_seqs"] == dropped > 0
        (output_dir / "nats_restart.json").write_text(json.dumps({
            "agents": seen, "tight_buffer_batches": SMALL_BUFFER, "tight_dropped": dropped,
            "outage_s": round(outage_s, 2)}, indent=1))
    finally:
        for a in agents:
            with contextlib.suppress(Exception):
                a.stop()
        orch.stop()


async def _nats_ok(c: httpx.AsyncClient) -> bool:
    return (await c.get("/v1/health")).json()["nats"]["ok"] is True


async def _depth_at_least(url: str, n: int) -> bool:
    return await ametric(url, "aether_agent_buffer_depth", outbox="telemetry") >= n


async def _depth_is(url: str, n: int) -> bool:
    return await ametric(url, "aether_agent_buffer_depth", outbox="telemetry") == n


async def _at_least(value, n: float) -> bool:
    return await value >= n


async def _health_ok(url: str) -> bool:
    return (await aget(f"{url}/health")).json()["status"] == "ok"


async def _rows_at_least(dsn: str, node: str, n: int) -> bool:
    rows, _ = await stored_samples(dsn, node)
    return rows >= n
