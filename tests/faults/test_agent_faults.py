"""Agents die under running jobs. One is SIGKILLed and restarted at once with its jobs' processes still running:
it kills them and reports them LOST, and they run again. The other is SIGKILLed and stays away: its jobs are
LOST when it stops heartbeating and run elsewhere; when it finally comes back it kills the processes it left
behind, and its stale reports change nothing. Every job ends exactly once, on its second attempt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal

import httpx
import pytest

from services.schemas import FINAL_STATES
from tests.faults.support import (
    agent,
    fetch,
    headers,
    job_in,
    node_name,
    start_orchestrator,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]

# The first attempt runs until killed; a later one ends at once with its attempt number as the result.
SCRIPT = """
import json, os, time
attempt = int(os.environ["AETHER_JOB_ATTEMPT"])
if attempt == 1:
    print("first attempt", os.getpid(), flush=True)
    time.sleep(300)
print(json.dumps({"attempt": attempt}))
"""
FINAL = sorted(s.value for s in FINAL_STATES)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie has exited; only its parent has not collected it
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def restart(svc) -> None:
    """Start the same agent again: same node, same work dir (state file), same port."""
    svc.start()


async def test_agent_killed_and_restarted_under_running_jobs(nats_server, database_url, output_dir):
    orch = await asyncio.to_thread(start_orchestrator, nats_server.url, database_url, output_dir / "orchestrator.log")
    a = agent(nats_server.url, node_name("kr"), output_dir)  # killed, restarted at once
    b = agent(nats_server.url, node_name("kg"), output_dir)  # killed, back only at the end
    await asyncio.gather(*(asyncio.to_thread(x.start) for x in (a, b)))
    node = {id(x): x.args[x.args.index("--node") + 1] for x in (a, b)}
    pids: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(base_url=orch.url, timeout=10, headers=headers()) as c:
            async def placeable():
                return sum(1 for g in (await c.get("/v1/gpus")).json() if g["healthy"]) == 4

            await until(placeable, 30, "four GPUs placeable")
            # 60 GB each: one job per GPU, so two land on each node.
            ids = []
            for i in range(4):
                r = await c.post("/v1/jobs", json={"name": f"victim-{i}", "script": SCRIPT, "gpu_mem_mb": 60000})
                assert r.status_code == 201, r.text
                ids.append(r.json()["job_id"])

            async def first_attempts_running():
                jobs = [(await c.get(f"/v1/jobs/{j}")).json() for j in ids]
                return jobs if all(j["state"] == "RUNNING" and j.get("pid") for j in jobs) else None

            jobs = await until(first_attempts_running, 40, "all four first attempts running")
            pids = {j["job_id"]: j["pid"] for j in jobs}
            on = {nd: [j["job_id"] for j in jobs if j["node"] == nd] for nd in node.values()}
            assert sorted(len(v) for v in on.values()) == [2, 2], on

            # 1. A dies and is restarted at once, with its jobs' processes still running.
            await asyncio.to_thread(a.kill)
            assert all(pid_alive(pids[j]) for j in on[node[id(a)]]), "SIGKILL of the agent leaves its jobs running"
            await asyncio.to_thread(restart, a)
            for j in on[node[id(a)]]:
                await until(lambda j=j: not pid_alive(pids[j]), 20, f"the restarted agent to kill {j}'s first attempt")
                await until(lambda j=j: job_in(c, j, "SUCCEEDED"), 40, f"{j} to succeed on its second attempt")

            # 2. B dies and stays away: its jobs are lost with it, and re-run on A.
            await asyncio.to_thread(b.kill)
            for j in on[node[id(b)]]:
                done = await until(lambda j=j: job_in(c, j, "SUCCEEDED"), 60, f"{j} re-run after B's death")
                assert done["node"] == node[id(a)], done
            left_behind = [j for j in on[node[id(b)]] if pid_alive(pids[j])]

            # 3. B comes back: it kills what it left running; its reports of those attempts change nothing.
            await asyncio.to_thread(restart, b)
            for j in on[node[id(b)]]:
                await until(lambda j=j: not pid_alive(pids[j]), 20, f"the returning agent to kill {j}'s first attempt")
            await until(lambda: _all_healthy(c, 4), 30, "both nodes placeable again")
            final = [(await c.get(f"/v1/jobs/{j}")).json() for j in ids]

        assert all(j["state"] == "SUCCEEDED" and j["attempt"] == 2 and j["lost_count"] == 1 for j in final), final
        assert all(j["result"] == {"attempt": 2} for j in final), final
        events = await fetch(database_url, "SELECT job_id, to_state, reason FROM job_events WHERE job_id = ANY($1)",
                             ids)
        for j in ids:
            mine = [e["to_state"] for e in events if e["job_id"] == j]
            assert mine.count("LOST") == 1 and sum(mine.count(s) for s in FINAL) == 1, (j, mine)
        reasons = [e["reason"] or "" for e in events if e["to_state"] == "LOST"]
        (output_dir / "agent_faults.json").write_text(json.dumps({
            "jobs": len(ids), "left_running_while_b_was_away": len(left_behind), "lost_reasons": reasons}, indent=1))
        # What B left behind ran on while B was away (nobody could stop it): the documented cost of a dead agent.
        assert len(left_behind) == 2
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for x in (a, b):
            with contextlib.suppress(Exception):
                x.stop()
        orch.stop()


async def _all_healthy(c: httpx.AsyncClient, n: int) -> bool:
    return sum(1 for g in (await c.get("/v1/gpus")).json() if g["healthy"]) == n
