"""Two orchestrator replicas on one database: one schedules (the lease), both take submissions; the leader is
killed mid-job and the other takes over, finishing what ran and placing what comes."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import nats

from services.localstack import NatsServer
from services.schemas import JobState
from tests.jobs.fake_agent import FakeAgent
from tests.jobs.support import (
    headers,
    metric,
    node_name,
    start_orchestrator,
    submit_when_ready,
    until,
    wait_state,
)


async def test_one_leader_and_takeover_after_a_crash(pg_server, tmp_path):
    ns = NatsServer().start()
    dsn = pg_server.create_database("failover_" + uuid.uuid4().hex[:8])
    replicas = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        replicas.append(start_orchestrator(ns.url, dsn, tmp_path / name, ORCHESTRATOR_INSTANCE_ID=name))
    nc = await nats.connect(ns.url)
    gate = asyncio.Event()

    async def held(agent, run):
        await gate.wait()
        return JobState.SUCCEEDED, 0, {"by": "held"}

    agent = await FakeAgent(nc, node_name(), gpus=2, behaviour=held).start()
    clients = [httpx.AsyncClient(base_url=r.url, timeout=10) for r in replicas]
    try:
        async def leaders():
            flags = [metric((await c.get("/metrics")).text, "aether_scheduler_leader") for c in clients]
            return flags if sorted(flags) == [0.0, 1.0] else None

        flags = await until(leaders, 20, "exactly one leader")
        lead, follow = (0, 1) if flags[0] == 1.0 else (1, 0)
        # Submitted to the follower, placed by the leader, which heard of it by a hint.
        hints = 'aether_job_reports_total{kind="hint"}'
        jid = await submit_when_ready(clients[follow], {"name": "via-follower", "command": ["true"]})
        await wait_state(clients[follow], jid, "RUNNING")

        async def hints_counted(n: float) -> bool:
            return metric((await clients[lead].get("/metrics")).text, hints) >= n

        await until(lambda: hints_counted(1.0), 10, "the leader to count the hint")
        # A job that cannot start yet (both GPUs asked for, nearly whole, and one holds the first job) waits in the leader's queue; cancelled on
        # the follower, it leaves that queue at once (by a hint, not at the next resync or placement attempt).
        big = await submit_when_ready(clients[follow], {"name": "waits", "command": ["true"], "gpus": 2,
                                                           "gpu_mem_mb": 81000})

        async def queue_depth_is(n: float) -> bool:
            return metric((await clients[lead].get("/metrics")).text, "aether_jobs_queue_depth") == n

        await until(lambda: queue_depth_is(1.0), 10, "the big job queued on the leader")
        assert (await clients[follow].delete(f"/v1/jobs/{big}", headers=headers())).status_code == 200
        await until(lambda: queue_depth_is(0.0), 10, "the cancelled job out of the leader's queue")
        await until(lambda: hints_counted(3.0), 10, "hints: queued, queued, cancelled")
        replicas[lead].kill()
        await until(lambda: metric(httpx.get(f"{replicas[follow].url}/metrics").text,
                                   "aether_scheduler_leader") == 1.0, 20, "the survivor to take the lease")
        gate.set()  # the job ends while the old leader is dead: the new one records it
        done = await wait_state(clients[follow], jid, "SUCCEEDED")
        assert done["result"] == {"by": "held"}
        after = await submit_when_ready(clients[follow], {"name": "after", "command": ["true"]})
        assert (await wait_state(clients[follow], after, "SUCCEEDED"))["attempt"] == 1
        assert [d.job_id for d in agent.dispatches].count(jid) == 1  # taken over, not run again
    finally:
        for c in clients:
            await c.aclose()
        await agent.stop()
        await nc.close()
        for r in replicas:
            r.stop()
        ns.cleanup()
