"""Jobs end to end with real `python -m agent --simulated` processes: the result comes back, output is followed
live, the GPU is pinned, cancel and timeout kill the whole process group, an agent killed mid-job leads to LOST
and a re-run elsewhere, and the `aether` CLI works against the real orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys

import orjson
import pytest

from tests.jobs.support import (
    events,
    headers,
    kill_group,
    node_name,
    pid_alive,
    real_agent,
    submit_when_ready,
    until,
    wait_state,
)
from tests.support.procs import TEST_TOKEN

CHILD_SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(f"child {child.pid}", flush=True)
time.sleep(300)
"""


@contextlib.asynccontextmanager
async def agents(stack, http, count: int = 1):
    """Real agents on nodes of this test; stopped afterwards and out of placement before the next test."""
    procs = [real_agent(stack["nats"].url, node_name("r"), stack["logs"]) for _ in range(count)]
    try:
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        yield procs
    finally:
        for p in procs:
            await asyncio.to_thread(p.stop)
            shutil.rmtree(p.args[p.args.index("--work-dir") + 1], ignore_errors=True)
        names = {p.args[p.args.index("--node") + 1] for p in procs}

        async def gone():
            nodes = (await http.get("/v1/nodes", headers=headers())).json()
            return not any(n["healthy"] for n in nodes if n["name"] in names)

        await until(gone, 15, "the test's nodes out of the cluster")


def node_of(proc) -> str:
    return proc.args[proc.args.index("--node") + 1]


async def child_pid(http, jid: str) -> int:
    async def find():
        lines = (await http.get(f"/v1/jobs/{jid}/logs", headers=headers())).json()["lines"]
        for line in lines:
            m = re.match(r"child (\d+)", line["line"])
            if m:
                return int(m.group(1))
        return None

    return await until(find, 30, f"job {jid} to print its child's pid")


async def test_result_live_logs_and_gpu_pinning(stack, http):
    script = ("import json, os, time\nprint('gpu', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
              "time.sleep(1.5)\nprint(json.dumps({'loss': 0.25, 'job': os.environ['AETHER_JOB_ID']}))\n")
    async with agents(stack, http):
        jid = await submit_when_ready(http, {"name": "train", "script": script, "gpu_mem_mb": 2048})
        seen = []
        async with http.stream("GET", f"/v1/jobs/{jid}/logs?follow=true", headers=headers(), timeout=60) as r:
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = orjson.loads(line[6:])
                    seen.append((event, data))
                    if event == "log" and data["line"].startswith("gpu"):
                        # Live: the job has not ended when its first line arrives. (Its RUNNING report may still be
                        # committing: the line comes straight off the bus, the state through the database.)
                        assert (await wait_state(http, jid, "RUNNING"))["finished_at"] is None
        job = await wait_state(http, jid, "SUCCEEDED")
        assert job["result"] == {"loss": 0.25, "job": jid} and job["exit_code"] == 0
        logs = [d["line"] for e, d in seen if e == "log" and d["stream"] == "stdout"]
        assert logs[0] == f"gpu {job['gpu']['index']}"  # CUDA_VISIBLE_DEVICES is the assigned GPU
        assert seen[-1] == ("end", {"state": "SUCCEEDED", "exit_code": 0, "result": job["result"], "error": None,
                                    "reason": None})


async def test_cancel_and_timeout_kill_the_whole_process_group(stack, http):
    async with agents(stack, http):
        timed = await submit_when_ready(http, {"name": "sleeper", "script": CHILD_SCRIPT, "max_duration_s": 4})
        cancelled = await submit_when_ready(http, {"name": "victim", "script": CHILD_SCRIPT})
        pids = {jid: await child_pid(http, jid) for jid in (timed, cancelled)}
        assert all(pid_alive(p) for p in pids.values())
        r = await http.delete(f"/v1/jobs/{cancelled}", headers=headers())
        assert r.status_code == 202
        assert (await wait_state(http, cancelled, "CANCELLED", within=30))["finished_at"]
        assert (await wait_state(http, timed, "TIMED_OUT", within=30))["finished_at"]
        for jid, pid in pids.items():
            await until(lambda pid=pid: not pid_alive(pid), 15, f"grandchild {pid} of {jid} gone")


async def test_agent_killed_mid_job_is_lost_and_rerun_elsewhere(stack, http):
    script = "import json, time\nprint('started', flush=True)\ntime.sleep(2)\nprint(json.dumps({'done': True}))\n"
    async with agents(stack, http, count=2) as procs:
        names = {node_of(p) for p in procs}

        async def both_up():  # so the re-run has somewhere to go at once
            gpus = (await http.get("/v1/gpus", headers=headers())).json()
            return {g["node"] for g in gpus if g["healthy"]} >= names

        await until(both_up, 20, "both nodes' GPUs placeable")
        jid = await submit_when_ready(http, {"name": "survivor", "script": script})
        running = await wait_state(http, jid, "RUNNING", within=30)
        victim = next(p for p in procs if node_of(p) == running["node"])
        orphan = running["pid"]
        try:
            victim.kill()  # SIGKILL: the agent dies, its job's process group is left behind
            done = await wait_state(http, jid, "SUCCEEDED", within=40)
        finally:
            if orphan:
                kill_group(orphan)
        assert done["node"] != running["node"] and done["lost_count"] == 1
        assert done["result"] == {"done": True}
        hist = [(e["from_state"], e["to_state"], e["node"]) for e in await events(http, jid)]
        assert ("RUNNING", "LOST", running["node"]) in hist


def aether(stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "AETHER_URL": stack["orch"].url, "AETHER_API_TOKEN": TEST_TOKEN}
    return subprocess.run([sys.executable, "-m", "aether.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


async def test_cli_against_a_real_orchestrator(stack, http):
    async with agents(stack, http) as procs:
        await submit_when_ready(http, {"name": "warm", "command": ["true"]})
        # The job runs as an unprivileged user on the node: the system's python3, not this virtualenv's.
        r = await asyncio.to_thread(aether, stack, "submit", "--name", "cli-job", "--", "python3", "-c",
                                    "import sys; print('hello from the cli'); sys.exit(3)")
        assert r.returncode == 3, r.stderr
        assert "hello from the cli" in r.stdout and "submitted" in r.stderr
        r = await asyncio.to_thread(aether, stack, "ls", "--json")
        assert r.returncode == 0 and any(j["name"] == "cli-job" and j["exit_code"] == 3
                                         for j in orjson.loads(r.stdout))
        r = await asyncio.to_thread(aether, stack, "gpus")
        assert r.returncode == 0 and node_of(procs[0]) in r.stdout
        r = await asyncio.to_thread(aether, stack, "submit", "-d", "--", "sleep", "120")
        jid = r.stdout.strip()
        assert r.returncode == 0 and re.fullmatch(r"j[0-9a-f]{16}", jid), r.stderr
        await wait_state(http, jid, "RUNNING", within=30)
        r = await asyncio.to_thread(aether, stack, "cancel", jid, "--wait", "30")
        assert r.returncode == 0 and r.stdout.strip() == f"{jid} CANCELLED", r.stderr
        r = await asyncio.to_thread(aether, stack, "cancel", jid)
        assert r.returncode == 1 and "JOB_NOT_CANCELLABLE" in r.stderr
        r = await asyncio.to_thread(aether, stack, "submit", "--gpu-mem-mb", "1048576", "--", "true")
        assert r.returncode == 125 and "RESOURCE_EXHAUSTED" in r.stderr


pytestmark = pytest.mark.timeout(120)
