"""Helpers of the jobs tests: an orchestrator with test tokens and settings, an async `until`, simulated agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from services.localstack import free_port, wait_for
from tests.jobs.fake_agent import FakeAgent
from tests.support.procs import TEST_TOKEN, Service, orchestrator
from tests.support.waiting import until

TOKENS = {
    "alpha": "alpha-submitter-token-0123456789",
    "beta": "beta-submitter-token-0123456789",
    "quota1": "quota1-submitter-token-0123456789",
    "gpuq": "gpuq-submitter-token-0123456789",
    "viewer": "viewer-token-only-0123456789",
}
FAST = {  # timings short enough for tests, long enough for a loaded 2-core machine
    "HEARTBEAT_TIMEOUT_S": "2.5", "JOB_DISPATCH_TIMEOUT_S": "1.5", "JOB_RECONCILE_GRACE_S": "2",
    "JOB_LEADER_CHECK_S": "0.5", "JOB_MAX_RETRIES": "1", "SAMPLE_STALE_S": "5",
}


def token_env() -> dict[str, str]:
    tokens = [{"token": t, "role": "submitter", "tenant": tenant, "name": tenant}
              for tenant, t in TOKENS.items() if tenant != "viewer"]
    tokens.append({"token": TOKENS["viewer"], "role": "viewer", "tenant": None, "name": "viewer"})
    return {"TOKENS": json.dumps(tokens),
            "JOB_TENANT_QUOTAS": json.dumps({"quota1": {"max_active_jobs": 1}, "gpuq": {"max_gpus": 2}})}


def start_orchestrator(nats_url: str, database_url: str, log_dir: Path, **env: str) -> Service:
    """Started and migrated: /v1/health says the database is up."""
    extra = {**FAST, **token_env(), **env}
    svc = orchestrator(nats_url, database_url, extra_env=extra, log_path=log_dir / "orchestrator.log").start()
    wait_for(lambda: httpx.get(f"{svc.url}/v1/health", timeout=5).json()["database"]["ok"], 30,
             "the orchestrator's database to be ready")
    return svc


def headers(who: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_TOKEN if who == 'admin' else TOKENS[who]}"}


async def submit_when_ready(c: httpx.AsyncClient, body: dict[str, Any], who: str = "admin",
                            within: float = 20) -> str:
    """Submit once the orchestrator knows a worker (NO_GPU_WORKERS until the first heartbeat arrives)."""
    async def go():
        r = await c.post("/v1/jobs", json=body, headers=headers(who))
        if r.status_code == 503 and r.json()["code"] in ("NO_GPU_WORKERS", "DATABASE_UNAVAILABLE"):
            return None
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    return await until(go, within, f"job {body.get('name')} accepted")


async def job(c: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await c.get(f"/v1/jobs/{job_id}", headers=headers())
    assert r.status_code == 200, r.text
    return r.json()


async def wait_state(c: httpx.AsyncClient, job_id: str, states: str | set[str], within: float = 20) -> dict:
    want = {states} if isinstance(states, str) else states

    async def check():
        j = await job(c, job_id)
        return j if j["state"] in want else None

    return await until(check, within, f"job {job_id} in {sorted(want)}")


async def burst_to_success(c: httpx.AsyncClient, prefix: str, n: int, gpu_mem_mb: int) -> list[str]:
    """Submit `n` one-GPU jobs at once (each must be accepted, 201), then wait until every one SUCCEEDED."""
    async def one(k: int) -> str:
        r = await c.post("/v1/jobs", json={"name": f"{prefix}{k}", "command": ["true"], "gpu_mem_mb": gpu_mem_mb},
                         headers=headers())
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    ids = await asyncio.gather(*(one(k) for k in range(n)))
    for jid in ids:
        await wait_state(c, jid, "SUCCEEDED", within=60)
    return list(ids)


async def events(c: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    r = await c.get(f"/v1/jobs/{job_id}/events", headers=headers())
    assert r.status_code == 200, r.text
    return r.json()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled metric, or the sum over its labels, in a /metrics text."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else float("nan")


@contextlib.asynccontextmanager
async def fake_agent(nc, http: httpx.AsyncClient, **kw: Any) -> AsyncIterator[FakeAgent]:
    """A started FakeAgent on a node of its own; afterwards retired and gone from placement before the next
    test runs (tests share one orchestrator per module)."""
    agent = await FakeAgent(nc, kw.pop("node", None) or node_name(), **kw).start()
    try:
        async def placeable():  # heartbeat and a stored sample: from now on placement considers it
            r = await http.get("/v1/gpus", headers=headers())
            return sum(1 for g in r.json() if g["node"] == agent.node and g["healthy"]) == agent.gpus

        await until(placeable, 15, f"{agent.node}'s GPUs placeable")
        yield agent
    finally:
        await agent.retire()

        async def gone():
            r = await http.get("/v1/gpus", headers=headers())
            return not any(g["healthy"] for g in r.json() if g["node"] == agent.node)

        await until(gone, 10, f"{agent.node}'s GPUs out of placement")
        await agent.stop()


def real_agent(nats_url: str, node: str, log_dir: Path, gpus: int = 2) -> Service:
    """`python -m agent --simulated` as a real process, beating fast so node loss shows within the test."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix=f"aether-agent-{node}-"))
    return Service("agent", args=["--simulated", "--node", node, "--gpus", str(gpus), "--nats", nats_url,
                                  "--http-port", str(port), "--work-dir", str(work), "--heartbeat", "0.5",
                                  "--interval", "0.5"],
                   env={"AGENT_KILL_GRACE_S": "2"}, port=port, log_path=log_dir / f"agent-{node}.log")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited already; only its parent has not collected it
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def node_name(prefix: str = "n") -> str:
    return prefix + uuid.uuid4().hex[:8]
