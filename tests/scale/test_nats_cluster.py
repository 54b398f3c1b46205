"""NATS as a three-server cluster, JetStream replicas = 3: an orchestrator and two real agents given the whole server
list; the server the orchestrator is connected to, made leader of both streams and both consumers first, is
SIGKILLed while jobs run. Telemetry and jobs go on through the two survivors, and nothing is lost: every batch an
agent made is in the stream (no gap in its sequence numbers), every sample in the stream is in the database once,
and every job submitted before and after the kill succeeded exactly once."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest

from services import bus, subjects
from services.localstack import NatsCluster
from tests.scale.support import (
    INGEST_CONSUMER,
    JOB_REPORTS_CONSUMER,
    JOBS_STREAM,
    attempts_run,
    clear_logs,
    connected_to,
    event_counts,
    healthy_gpus,
    job_states,
    move_leader,
    replicated,
    rows_per_node,
    start_agent,
    start_orchestrator,
    stream_batches,
    submit,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ORCH_NAME = "orchestrator-scale-nats"  # the NATS connection name of ORCHESTRATOR_INSTANCE_ID=scale-nats


async def test_cluster_loses_a_server_and_nothing_else(database_url, unique_node, output_dir):
    clear_logs(output_dir)
    cluster = await asyncio.to_thread(NatsCluster().start)
    orch = None
    agents = []
    nc = None
    nodes = [f"{unique_node}-a", f"{unique_node}-b"]
    try:
        orch = await asyncio.to_thread(start_orchestrator, cluster.url, database_url, output_dir / "orchestrator.log",
                                       STREAM_REPLICAS="3", ORCHESTRATOR_INSTANCE_ID="scale-nats")
        agents = [await asyncio.to_thread(start_agent, cluster.url, n, output_dir) for n in nodes]
        nc = await bus.connect(cluster.url, name="scale-test")
        js = nc.jetstream()
        for stream in (subjects.TELEMETRY_STREAM, JOBS_STREAM):
            # The agents ensure the streams too, with their default of one replica: it must not shrink them.
            await until(lambda s=stream: replicated(js, s, 3), 30, f"{stream} with 3 current replicas")
        async with httpx.AsyncClient() as http:
            async def four_gpus():
                return await healthy_gpus(http, orch.url, set(nodes)) == 4
            await until(four_gpus, 30, "4 healthy GPUs with samples")

            before = [await submit(http, orch.url, f"before-{i}", ["sleep", "4"]) for i in range(4)]

            async def running():
                states = await job_states(database_url, before)
                return all(s == "RUNNING" for s in states.values()) and len(states) == len(before)
            await until(running, 40, "the first jobs RUNNING")

            # The worst server to lose: the orchestrator's own, leading every stream and consumer it uses.
            ports = [s.http_port for s in cluster.servers]
            victim = ports.index(await until(lambda: connected_to(ports, ORCH_NAME), 10, "the orchestrator's server"))
            name = cluster.server_name(victim)
            for stream, consumer in ((subjects.TELEMETRY_STREAM, None), (subjects.TELEMETRY_STREAM, INGEST_CONSUMER),
                                     (JOBS_STREAM, None), (JOBS_STREAM, JOB_REPORTS_CONSUMER)):
                await move_leader(nc, js, name, stream, consumer)
            killed_at = time.time()
            await asyncio.to_thread(cluster.kill, victim)

            survivors = [p for i, p in enumerate(ports) if i != victim]
            await until(lambda: connected_to(survivors, ORCH_NAME), 30, "the orchestrator reconnected to a survivor")

            async def new_leader():
                info = await js.stream_info(subjects.TELEMETRY_STREAM)
                return info.cluster.leader not in (None, name)
            await until(new_leader, 30, "a new telemetry stream leader")
            after = [await submit(http, orch.url, f"after-{i}", ["sleep", "1"]) for i in range(4)]
            jobs = before + after

            async def succeeded():
                states = await job_states(database_url, jobs)
                assert not {"FAILED", "LOST", "CANCELLED", "TIMED_OUT"} & set(states.values()), states
                return all(s == "SUCCEEDED" for s in states.values())
            await until(succeeded, 90, "every job SUCCEEDED")

            async def fresh_samples():
                conn = await asyncpg.connect(database_url)
                try:
                    rows = await conn.fetch("SELECT gpu_uuid, max(time) AS t FROM gpu_samples "
                                            "WHERE node = ANY($1::text[]) GROUP BY gpu_uuid", nodes)
                finally:
                    await conn.close()
                return len(rows) == 4 and all(r["t"].timestamp() > killed_at + 3 for r in rows)
            await until(fresh_samples, 40, "samples of every GPU stored after the kill")

        counts = await event_counts(database_url, jobs)
        for jid, c in counts.items():
            assert c.get("SUCCEEDED") == 1, (jid, c)
            assert c.get("RUNNING") == 1, (jid, c)
        assert attempts_run(agents) == {j: 1 for j in jobs}  # each job ran once, on one node

        # SIGTERM: each agent flushes what it still buffers; then the stream holds every batch it made.
        for a in agents:
            await asyncio.to_thread(a.stop)
        expected = {}
        for node in nodes:
            batches = await stream_batches(js, node)
            seqs = sorted(b.seq for b in batches)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{node}: batches missing from the stream"
            assert seqs[0] == 0
            expected[node] = sum(len(b.samples) for b in batches)
        await until(lambda: _equal(database_url, expected), 40, f"the database to hold the stream's {expected} samples")
        # Each batch is acknowledged after its commit, so the last ack can still be on its way (through the
        # cluster) when its rows are visible: wait for it rather than race it.
        async def all_acked():
            info = await js.consumer_info(subjects.TELEMETRY_STREAM, INGEST_CONSUMER)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await until(all_acked, 10, "every stored batch acknowledged, nothing left pending")
    finally:
        if nc is not None:
            await nc.close()
        for a in agents:
            await asyncio.to_thread(a.stop)
        if orch is not None:
            await asyncio.to_thread(orch.stop)
        await asyncio.to_thread(cluster.cleanup)


async def _equal(dsn: str, expected: dict[str, int]) -> bool:
    return await rows_per_node(dsn, list(expected)) == expected
