"""Placing at admission, against a real orchestrator, NATS and PostgreSQL: on the leader, a job that can start now
is placed in the transaction that stores it (one commit, no scheduler pass before its dispatch), with its history
whole and in order; with a job waiting, a new one queues behind it instead (it never overtakes at admission)."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson

from services import subjects
from services.schemas import JobState
from tests.jobs.support import events, fake_agent, headers, job, until, wait_state

CMD = {"command": ["true"]}


def holding(gate: asyncio.Event):
    async def behaviour(agent, run):
        await gate.wait()
        return JobState.SUCCEEDED, 0, None
    return behaviour


async def _submit(http, name: str, mem_mb: int) -> dict:
    async def go():
        r = await http.post("/v1/jobs", json={"name": name, **CMD, "gpu_mem_mb": mem_mb}, headers=headers())
        if r.status_code == 503 and r.json()["code"] == "NO_GPU_WORKERS":
            return None
        assert r.status_code == 201, r.text
        return r.json()
    return await until(go, 20, f"{name} accepted")


async def test_a_job_that_can_start_now_is_placed_as_it_is_stored(http, nc, stack):
    gate = asyncio.Event()
    published: list[dict] = []

    async def on_event(msg) -> None:
        published.append(orjson.loads(msg.data))

    sub = await nc.subscribe(subjects.job_state("*"), cb=on_event)
    async with fake_agent(nc, http, gpus=1, behaviour=holding(gate)) as agent:
        first = await _submit(http, "now", 60000)
        assert first["state"] == "SCHEDULED"  # the answer says where the job already is
        running = await wait_state(http, first["job_id"], "RUNNING")
        assert running["node"] == agent.node and [d.job_id for d in agent.dispatches] == [first["job_id"]]
        history = await events(http, first["job_id"])
        assert [(e["from_state"], e["to_state"]) for e in history] == [
            (None, "PENDING"), ("PENDING", "SCHEDULED"), ("SCHEDULED", "RUNNING")]
        # The orchestrator's own events on NATS, in order: submitted, then placed.
        async def ours():
            states = [e["state"] for e in published if e["job_id"] == first["job_id"] and e["source"] == "orchestrator"]
            return states if len(states) >= 2 else None

        assert (await until(ours, 5, "the orchestrator's events"))[:2] == ["PENDING", "SCHEDULED"]
        # The GPU is taken: a second big job cannot start, so it is stored PENDING and waits in the queue.
        second = await _submit(http, "waits", 60000)
        assert second["state"] == "PENDING"
        # A small job would fit beside the first, but one is waiting: it is not placed at admission.
        third = await _submit(http, "behind", 1000)
        assert third["state"] == "PENDING"
        await wait_state(http, third["job_id"], {"RUNNING", "SUCCEEDED"})  # (a pass may still let it go first)
        gate.set()
        for jid in (first["job_id"], second["job_id"], third["job_id"]):
            await wait_state(http, jid, "SUCCEEDED", within=30)
        assert sorted(d.job_id for d in agent.dispatches) == sorted([first["job_id"], second["job_id"],
                                                                      third["job_id"]])
        placed = await job(http, first["job_id"])
        assert placed["placement"]["chosen_uuid"] == agent.uuid(0)
        # Its decision was stored with it, in admission's statement: one row, the whole decision.
        conn = await asyncpg.connect(stack["dsn"])
        try:
            rows = await conn.fetch("SELECT * FROM placements WHERE job_id = $1", first["job_id"])
        finally:
            await conn.close()
        assert len(rows) == 1
        row = rows[0]
        assert (row["chosen_uuid"], row["chosen_node"], row["chosen_uuids"]) == (agent.uuid(0), agent.node,
                                                                              [agent.uuid(0)])
        assert orjson.loads(row["scores"]) == placed["placement"]["scores"]
        assert orjson.loads(row["job_features"])["gpu_mem_mb"] == 60000
    await sub.unsubscribe()
