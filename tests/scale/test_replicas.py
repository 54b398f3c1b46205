"""Two orchestrator replicas on one database and one NATS, with two real agents: ingest is shared through the durable
consumer (both store, together exactly what the stream holds), one replica schedules (the PostgreSQL lease), and
SIGKILLing the leader in the middle of a job burst loses no job and places none twice while the standby takes
over. Submissions go to both replicas; one cut off by the kill is retried on the survivor with its Idempotency-Key.

The worst moment for the leader to die is while it holds agents' job reports it has fetched but not yet committed:
the leader is frozen (SIGSTOP) until the reports consumer shows messages delivered and unacknowledged, then killed,
so that moment is certain rather than a matter of luck."""

from __future__ import annotations

import asyncio
import math
import os
import signal

import httpx
import pytest

from services import bus, subjects
from tests.scale.support import (
    INGEST_CONSUMER,
    JOB_REPORTS_CONSUMER,
    JOBS_STREAM,
    attempts_run,
    clear_logs,
    event_counts,
    healthy_gpus,
    job_states,
    rows_per_node,
    scrape,
    start_agent,
    start_orchestrator,
    stream_batches,
    until,
)
from tests.support.procs import auth_headers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BURST = 60
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "LOST"}


def _n(v: float) -> float:
    return 0.0 if math.isnan(v) else v


async def test_replicas_share_ingest_and_fail_over_without_losing_a_job(nats_server, database_url, unique_node,
                                                                         output_dir):
    clear_logs(output_dir)
    replicas, agents = [], []
    nc = None
    nodes = [f"{unique_node}-a", f"{unique_node}-b"]
    try:
        for name in ("rep-a", "rep-b"):
            replicas.append(await asyncio.to_thread(start_orchestrator, nats_server.url, database_url,
                                                    output_dir / f"orchestrator-{name}.log",
                                                    ORCHESTRATOR_INSTANCE_ID=name))
        agents = [await asyncio.to_thread(start_agent, nats_server.url, n, output_dir, 2) for n in nodes]
        nc = await bus.connect(nats_server.url, name="scale-test")
        js = nc.jetstream()
        urls = [r.url for r in replicas]
        async with httpx.AsyncClient() as http:
            seen: dict[str, int] = {}

            async def gpus_everywhere():
                for u in urls:
                    seen[u] = await healthy_gpus(http, u, set(nodes))
                return all(n == 4 for n in seen.values())
            await until(gpus_everywhere, 30, "both replicas to see 4 healthy GPUs", seen=lambda: seen)

            # Ingest is shared: each replica stores part of the stream.
            async def both_store():
                return all([await scrape(http, u, "aether_ingest_samples_total") > 0 for u in urls])
            await until(both_store, 30, "both replicas storing telemetry")

            # Exactly one schedules.
            async def one_leader():
                flags = [_n(await scrape(http, u, "aether_scheduler_leader")) for u in urls]
                return flags if sorted(flags) == [0.0, 1.0] else None
            flags = await until(one_leader, 30, "exactly one scheduler leader")
            lead = flags.index(1.0)
            follow = 1 - lead

            alive = list(urls)
            keys: dict[str, str] = {}  # idempotency key -> job id

            async def submit_one(i: int) -> None:
                key = f"burst-{unique_node}-{i}"
                body = {"name": f"burst-{i}", "command": ["sleep", "2"], "gpu_mem_mb": 1024, "max_duration_s": 120}
                turn = i
                for _ in range(50):
                    url = alive[turn % len(alive)]
                    turn += 1
                    try:
                        r = await http.post(f"{url}/v1/jobs", json=body, timeout=5,
                                            headers={**auth_headers(), "Idempotency-Key": key})
                    except httpx.TransportError:
                        continue  # cut off by the kill: the same key on the other replica
                    if r.status_code in (200, 201):
                        keys[key] = r.json()["job_id"]
                        return
                    assert r.status_code == 503, r.text
                    await asyncio.sleep(0.2)
                raise AssertionError(f"job {key} never accepted")

            async def burst():
                tasks = []
                for i in range(BURST):
                    tasks.append(asyncio.create_task(submit_one(i)))
                    await asyncio.sleep(0.1)
                await asyncio.gather(*tasks)

            submitting = asyncio.create_task(burst())

            async def midway():
                states = await job_states(database_url, list(keys.values()))
                return len(keys) >= BURST // 3 and sum(s == "RUNNING" for s in states.values()) >= 3

            await until(midway, 30, "the burst under way with jobs running")
            placed_by_follower = _n(await scrape(http, urls[follow], "aether_placements_total"))
            assert placed_by_follower == 0  # the standby never placed a job while the leader lived
            caught = await kill_holding_reports(js, replicas[lead].proc.pid, database_url, list(keys.values()))
            print(f"leader killed holding job reports: {caught}")
            await asyncio.to_thread(replicas[lead].kill)
            alive.remove(urls[lead])
            await submitting
            assert len(keys) == BURST and len(set(keys.values())) == BURST

            await until(lambda: scrape(http, urls[follow], "aether_scheduler_leader"), 20,
                        "the standby to take the lease")  # 1.0 once it leads
            ids = list(keys.values())

            async def all_final():
                states = await job_states(database_url, ids)
                return states if len(states) == BURST and set(states.values()) <= FINAL else None
            states = await until(all_final, 90, "every job of the burst finished")
            assert set(states.values()) == {"SUCCEEDED"}, states
            assert _n(await scrape(http, urls[follow], "aether_placements_total")) > 0

        # Placed once and run once (a SCHEDULED job the dead leader left is dispatched again by the new one with the
        # same attempt, which the agent acknowledges without running it again), finished once, and its history
        # whole (RUNNING recorded). Every violation is listed, the worst first.
        counts = await event_counts(database_url, ids)
        ran = attempts_run(agents)
        twice = {j: (ran.get(j), c) for j, c in counts.items() if ran.get(j) != 1 or c.get("SCHEDULED") != 1
                 or c.get("SUCCEEDED") != 1}
        no_running = {j: c for j, c in counts.items() if c.get("RUNNING") != 1}
        assert not twice, f"jobs lost or placed more than once (attempts the agents ran, events): {twice}"
        assert not no_running, f"jobs whose RUNNING transition is not in job_events: {no_running}"

        # Telemetry: after the agents stop (and flush), the database holds exactly what the stream holds.
        for a in agents:
            await asyncio.to_thread(a.stop)
        expected = {}
        for node in nodes:
            batches = await stream_batches(js, node)
            seqs = sorted(b.seq for b in batches)
            assert seqs == list(range(len(seqs))), f"{node}: batches missing from the stream"
            expected[node] = sum(len(b.samples) for b in batches)

        async def stored_all():
            return await rows_per_node(database_url, nodes) == expected
        await until(stored_all, 40, f"the database to hold the stream's {expected} samples")
        info = await js.consumer_info(subjects.TELEMETRY_STREAM, INGEST_CONSUMER)
        assert info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        if nc is not None:
            await nc.close()
        for a in agents:
            await asyncio.to_thread(a.stop)
        for r in replicas:
            await asyncio.to_thread(r.stop)


async def kill_holding_reports(js, pid: int, dsn: str, ids: list[str]) -> bool:
    """Freeze the leader; if it holds job reports (delivered, not acknowledged) it stays frozen for the kill, else
    it runs on until more jobs have started, and is frozen again. True when it was caught holding some."""
    for _ in range(10):
        os.kill(pid, signal.SIGSTOP)

        async def held():
            return (await js.consumer_info(JOBS_STREAM, JOB_REPORTS_CONSUMER)).num_ack_pending > 0
        try:
            await until(held, 2, "job reports held by the frozen leader")
            return True
        except TimeoutError:
            pass
        started = sum(s != "PENDING" and s != "SCHEDULED" for s in (await job_states(dsn, ids)).values())
        os.kill(pid, signal.SIGCONT)

        async def progressed(started=started):
            states = await job_states(dsn, ids)
            return sum(s != "PENDING" and s != "SCHEDULED" for s in states.values()) > started
        try:
            await until(progressed, 5, "more jobs started or finished")
        except TimeoutError:
            break  # the burst is over: kill it as it is
    return False
