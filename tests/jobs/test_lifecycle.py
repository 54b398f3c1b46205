"""Job lifecycle against a real orchestrator, NATS and PostgreSQL, with agents speaking the protocol from the test:
no double run under concurrent submissions, dispatch without ack, node loss and the retry limit, reconciliation
against heartbeats, strays, live logs, malformed reports."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson

from services import subjects
from services.schemas import JobState, JobStateEvent
from tests.jobs.support import (
    burst_to_success,
    events,
    fake_agent,
    headers,
    metric,
    submit_when_ready,
    until,
    wait_state,
)

CMD = {"command": ["true"]}


def _carbon_forecast() -> str:
    """A grid that is dirty now and five times cleaner in an hour: deferrable jobs should wait."""
    import tempfile
    import time as _time

    now = int(_time.time())
    fh = tempfile.NamedTemporaryFile("w", suffix=".csv", prefix="aether-carbon-", delete=False)
    fh.write(f"time,intensity\n{now - 3600},500\n{now + 3600},100\n{now + 7200},500\n")
    fh.close()
    return fh.name


ORCHESTRATOR_ENV = {"CARBON": orjson.dumps({"intensity_csv": _carbon_forecast()}).decode()}


def holding(gate: asyncio.Event, first_line: str = "holding"):
    async def behaviour(agent, run):
        await agent.log(run, "stdout", first_line)
        await gate.wait()
        await agent.log(run, "stdout", "released")
        return JobState.SUCCEEDED, 0, {"attempt": run.cmd.attempt}
    return behaviour


async def hold_forever(agent, run):
    await asyncio.Event().wait()


async def test_no_double_run_and_no_overcommit_under_concurrent_submissions(http, nc):
    async def short(agent, run):
        await asyncio.sleep(0.2)
        return JobState.SUCCEEDED, 0, None

    async with fake_agent(nc, http, gpus=2, mem_total_mb=8000, behaviour=short) as a, \
            fake_agent(nc, http, gpus=2, mem_total_mb=8000, behaviour=short) as b:
        await submit_when_ready(http, {"name": "warm", **CMD, "gpu_mem_mb": 3000})
        ids = await burst_to_success(http, "c", 40, 3000)
        dispatched = Counter(d.job_id for d in a.dispatches + b.dispatches)
        assert all(dispatched[jid] == 1 for jid in ids), dispatched
        # 8000 MB GPUs and 3000 MB jobs: never more than two at a time on one GPU.
        assert max([*a.max_mem_seen.values(), *b.max_mem_seen.values()]) <= 6000
        for jid in ids[:10]:
            kinds = Counter(e["to_state"] for e in await events(http, jid))
            assert kinds["SCHEDULED"] == 1 and kinds["RUNNING"] == 1 and kinds["SUCCEEDED"] == 1


async def test_a_burst_is_placed_in_batches_with_one_decision_row_per_job(stack, http, nc):
    """A scheduler pass commits many placements in one transaction, recording the decisions together: every job
    still gets exactly one SCHEDULED event and one `placements` row, matching its assignment."""
    import asyncpg

    async def short(agent, run):
        return JobState.SUCCEEDED, 0, None

    async with fake_agent(nc, http, gpus=4, mem_total_mb=80000, behaviour=short) as a:
        await submit_when_ready(http, {"name": "warm", **CMD, "gpu_mem_mb": 100})
        ids = await burst_to_success(http, "burst", 120, 100)
        assert all(n == 1 for n in Counter(d.job_id for d in a.dispatches if d.job_id in ids).values())
    conn = await asyncpg.connect(stack["dsn"])
    try:
        rows = await conn.fetch("SELECT p.job_id, count(*) AS n, min(p.chosen_uuid) AS uuid, "
                                "min(j.assignment->0->>'uuid') AS assigned FROM placements p "
                                "JOIN jobs j ON j.id = p.job_id WHERE p.job_id = ANY($1::text[]) GROUP BY p.job_id",
                                ids)
        scheduled = await conn.fetchval("SELECT count(*) FROM job_events WHERE job_id = ANY($1::text[]) "
                                        "AND to_state = 'SCHEDULED'", ids)
    finally:
        await conn.close()
    assert len(rows) == len(ids) and all(r["n"] == 1 and r["uuid"] == r["assigned"] for r in rows)
    assert scheduled == len(ids)


async def test_unacknowledged_dispatch_goes_back_to_the_queue_and_elsewhere(http, nc):
    # Best fit sends the job to the smallest GPUs first: the silent node, then the refusing one.
    async with fake_agent(nc, http, gpus=1, mem_total_mb=16000, reply="silent") as silent, \
            fake_agent(nc, http, gpus=1, mem_total_mb=24000, reply="refuse") as refusing, \
            fake_agent(nc, http, gpus=1, mem_total_mb=81559) as good:
        jid = await submit_when_ready(http, {"name": "bounce", **CMD})
        done = await wait_state(http, jid, "SUCCEEDED", within=30)
        assert done["node"] == good.node and done["attempt"] == 3
        history = [(e["from_state"], e["to_state"], e["node"]) for e in await events(http, jid)]
        back = [h for h in history if h[:2] == ("SCHEDULED", "PENDING")]
        assert [h[2] for h in back] == [silent.node, refusing.node], history
        assert [d.job_id for d in silent.dispatches] == [jid] and [d.job_id for d in refusing.dispatches] == [jid]
        await until(lambda: [c.job_id for c in silent.cancels] == [jid], 10, "the silent node told to drop it")
        assert [d.attempt for d in good.dispatches] == [3]


async def test_node_loss_requeues_elsewhere_then_fails_past_the_retry_limit(http, nc):
    gate = asyncio.Event()
    async with fake_agent(nc, http, gpus=1, mem_total_mb=16000, behaviour=holding(gate)) as dies, \
            fake_agent(nc, http, gpus=1, mem_total_mb=81559) as survives:
        jid = await submit_when_ready(http, {"name": "lost-once", **CMD})
        # Its RUNNING report recorded (not only the run accepted: a node that dies before it reports leaves the job
        # SCHEDULED, and SCHEDULED -> LOST is right then), then the node dies.
        assert (await wait_state(http, jid, "RUNNING", within=15))["node"] == dies.node
        await dies.stop()  # as a crashed node: no more heartbeats, answers or reports
        done = await wait_state(http, jid, "SUCCEEDED", within=20)
        assert done["node"] == survives.node and done["lost_count"] == 1 and done["attempt"] == 2
        hist = [(e["from_state"], e["to_state"]) for e in await events(http, jid)]
        assert ("RUNNING", "LOST") in hist and ("LOST", "PENDING") in hist
    # JOB_MAX_RETRIES=1: the second loss is final.
    async with fake_agent(nc, http, gpus=1, behaviour=hold_forever) as first:
        jid = await submit_when_ready(http, {"name": "lost-twice", **CMD})
        await until(lambda: jid in first.running, 15, "the job running on the first node")
        async with fake_agent(nc, http, gpus=1, mem_total_mb=16000, behaviour=hold_forever) as second:
            await first.stop()
            await until(lambda: jid in second.running, 20, "the job re-run on the second node")
            await second.stop()
            failed = await wait_state(http, jid, "FAILED", within=20)
    assert failed["lost_count"] == 2 and "retry limit" in failed["reason"]


async def test_job_missing_from_heartbeats_is_lost_and_rerun(http, nc):
    async def first_attempt_hangs(agent, run):
        if run.cmd.attempt == 1:
            await asyncio.Event().wait()
        return JobState.SUCCEEDED, 0, {"attempt": run.cmd.attempt}

    async with fake_agent(nc, http, gpus=1, behaviour=first_attempt_hangs) as agent:
        jid = await submit_when_ready(http, {"name": "forgotten", **CMD})
        await wait_state(http, jid, "RUNNING")
        agent.list_in_heartbeat = False  # as an agent restarted without its state would report

        async def lost():
            return any(e["to_state"] == "LOST" for e in await events(http, jid))

        await until(lost, 20, "the job declared LOST")
        agent.list_in_heartbeat = True
        done = await wait_state(http, jid, "SUCCEEDED", within=20)
        assert done["result"] == {"attempt": 2}
        lost_event = next(e for e in await events(http, jid) if e["to_state"] == "LOST")
        assert "heartbeats" in lost_event["reason"]


async def test_strays_and_stale_reports_get_cancelled(http, nc):
    gate = asyncio.Event()
    async with fake_agent(nc, http, gpus=1, behaviour=holding(gate)) as owner, \
            fake_agent(nc, http, gpus=1, mem_total_mb=16000, reply="refuse") as other:
        jid = await submit_when_ready(http, {"name": "owned", "command": ["true"], "gpu_mem_mb": 20000})
        await wait_state(http, jid, "RUNNING")
        assert owner.running.get(jid) is not None
        # `other` claims in its heartbeats a job it was never given, and reports it running: both are told off.
        other.extra_running = ["j00000000000000ff"]
        stale = JobStateEvent(job_id=jid, state=JobState.RUNNING, time=datetime.now(UTC), source="agent",
                              attempt=1, node=other.node)
        await nc.jetstream().publish(subjects.job_report(jid, other.node), stale.to_bytes())
        await until(lambda: {c.job_id for c in other.cancels} == {jid, "j00000000000000ff"}, 15,
                    "cancels sent to the node running what is not its own")
        assert (await wait_state(http, jid, "RUNNING"))["node"] == owner.node  # the real run is untouched
        assert not owner.cancels
        text = (await http.get("/metrics")).text
        assert metric(text, 'aether_job_reports_refused_total{reason="stale_node"}') >= 1
        gate.set()
        await wait_state(http, jid, "SUCCEEDED")


async def test_logs_follow_live_until_the_job_ends(http, nc):
    gate = asyncio.Event()
    async with fake_agent(nc, http, gpus=1, behaviour=holding(gate, "first line")):
        jid = await submit_when_ready(http, {"name": "chatty", **CMD})
        seen: list[tuple[str, dict]] = []
        async with http.stream("GET", f"/v1/jobs/{jid}/logs", params={"follow": "true"}, headers=headers(),
                               timeout=30) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = orjson.loads(line[6:])
                    seen.append((event, data))
                    if event == "log" and data["line"] == "first line":
                        # Live: the job has not ended when its first line arrives.
                        assert (await wait_state(http, jid, "RUNNING"))["finished_at"] is None
                        gate.set()
        logs = [d["line"] for e, d in seen if e == "log"]
        assert logs == ["first line", "released"]
        assert seen[-1][0] == "end" and seen[-1][1]["state"] == "SUCCEEDED"
        assert seen[-1][1]["result"] == {"attempt": 1}
        stored = (await http.get(f"/v1/jobs/{jid}/logs", headers=headers())).json()
        assert [x["line"] for x in stored["lines"]] == logs


async def test_malformed_reports_are_counted_and_dead_lettered(http, nc):
    got: list = []

    async def keep(msg) -> None:
        got.append(msg)

    sub = await nc.subscribe(f"{subjects.DEADLETTER_PREFIX}.jobs", cb=keep)
    await nc.flush()
    before = metric((await http.get("/metrics")).text, "aether_job_reports_malformed_total")
    before = 0.0 if before != before else before  # NaN: not yet exported
    js = nc.jetstream()
    await js.publish(subjects.scheduler_hint("j0000000000000aaa"), b"{not json")
    await js.publish(subjects.job_log("j0000000000000bbb", "n1"), orjson.dumps({"v": 1, "job_id": "other", "seq": 0,
                                                                          "stream": "stdout", "line": "x",
                                                                          "time": "2026-01-01T00:00:00Z"}))

    async def counted():
        return metric((await http.get("/metrics")).text, "aether_job_reports_malformed_total") == before + 2

    await until(counted, 15, "two malformed job messages counted")
    await until(lambda: len(got) == 2, 5, "two dead letters")
    assert {m.headers["Aether-Original-Subject"] for m in got} == {subjects.scheduler_hint("j0000000000000aaa"),
                                                                  subjects.job_log("j0000000000000bbb", "n1")}
    await sub.unsubscribe()


async def test_live_clients_get_job_changes_and_subscribed_log_lines(stack, http, nc):
    from websockets.asyncio.client import connect

    from tests.support.procs import TEST_TOKEN

    gate = asyncio.Event()
    url = stack["orch"].url.replace("http://", "ws://") + f"/v1/ws?token={TEST_TOKEN}"
    async with fake_agent(nc, http, gpus=1, behaviour=holding(gate, "to the dashboard")), connect(url) as ws:
        snapshot = orjson.loads(await ws.recv())
        assert snapshot["type"] == "snapshot" and set(snapshot["jobs"]) >= {"queued", "running", "recent"}
        jid = await submit_when_ready(http, {"name": "watched", **CMD})
        await ws.send(orjson.dumps({"subscribe": f"job:{jid}"}).decode())
        states, lines = set(), []

        async def read() -> None:
            while "SUCCEEDED" not in states:
                msg = orjson.loads(await ws.recv())
                if msg.get("type") == "job" and msg["job"]["job_id"] == jid:
                    states.add(msg["job"]["state"])
                elif msg.get("type") == "log" and msg["job_id"] == jid:
                    lines.append(msg["line"])
                if "RUNNING" in states and lines:
                    gate.set()  # the job ends only once its first line reached the live client

        await asyncio.wait_for(read(), 30)
        assert {"SCHEDULED", "RUNNING", "SUCCEEDED"} <= states
        assert lines[:1] == ["to the dashboard"]


async def test_multi_gpu_job_gets_gpus_of_one_node(http, nc):
    async with fake_agent(nc, http, gpus=2, mem_total_mb=16000) as small, \
            fake_agent(nc, http, gpus=4, mem_total_mb=81559) as big:
        jid = await submit_when_ready(http, {"name": "wide", **CMD, "gpus": 3})
        done = await wait_state(http, jid, "SUCCEEDED")
        assert {g["node"] for g in done["assigned_gpus"]} == {big.node} and len(done["assigned_gpus"]) == 3
        (cmd,) = [d for d in big.dispatches if d.job_id == jid]
        assert len(set(cmd.gpu_indices)) == 3 and cmd.gpu_uuids == [g["uuid"] for g in done["assigned_gpus"]]
        assert not small.dispatches


async def test_deferrable_job_waits_for_a_cleaner_window(http, nc):
    async with fake_agent(nc, http, gpus=1) as agent:
        deadline = (datetime.now(UTC) + timedelta(hours=6)).isoformat()
        waits = await submit_when_ready(http, {"name": "green", **CMD, "deferrable": True, "deadline": deadline})
        now = await submit_when_ready(http, {"name": "urgent", **CMD})
        await wait_state(http, now, "SUCCEEDED")  # submitted later, placed at once
        assert (await wait_state(http, waits, "PENDING"))["node"] is None
        assert waits not in {d.job_id for d in agent.dispatches}
        # Its latest start already passed (deadline too close for a cleaner window): it runs now.
        late = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
        soon = await submit_when_ready(http, {"name": "late", **CMD, "deferrable": True, "deadline": late,
                                              "max_duration_s": 60})
        await wait_state(http, soon, "SUCCEEDED")
        r = await http.delete(f"/v1/jobs/{waits}", headers=headers())
        assert r.json()["state"] == "CANCELLED"
