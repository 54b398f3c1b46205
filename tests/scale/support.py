"""Helpers of the scale-out tests: real orchestrators and agents as processes, polling with a deadline, and counting
what the stream holds against what the database stored."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import asyncpg
import httpx
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services import subjects
from services.localstack import free_port, wait_for
from services.schemas import TelemetryBatch
from tests.support.procs import Service, auth_headers, orchestrator
from tests.support.waiting import until

# Timings short enough for a test, long enough that a NATS fail-over (a second or two) on a loaded 2-core machine
# does not look like a dead node or an unanswered dispatch.
ORCH_ENV = {
    "HEARTBEAT_TIMEOUT_S": "10", "SAMPLE_STALE_S": "10", "JOB_LEADER_CHECK_S": "0.5", "JOB_DISPATCH_TIMEOUT_S": "5",
    "JOB_RECONCILE_GRACE_S": "6", "INGEST_ACK_WAIT_S": "5", "INGEST_HEARTBEAT_S": "1", "INGEST_FETCH_TIMEOUT_S": "5",
    "LOG_LEVEL": "INFO",
}
JOB_REPORTS_CONSUMER = "aether-job-reports"
INGEST_CONSUMER = "aether-ingest"
JOBS_STREAM = "AETHER_JOBS"


def start_orchestrator(nats_url: str, dsn: str, log_path: Path, **env: str) -> Service:
    """A started orchestrator whose database is migrated and ready."""
    svc = orchestrator(nats_url, dsn, extra_env={**ORCH_ENV, **env}, log_path=log_path).start(timeout=60)
    wait_for(lambda: httpx.get(f"{svc.url}/v1/health", timeout=5).json()["database"]["ok"], 60,
             "the orchestrator's database to be ready")
    return svc


def start_agent(nats_url: str, node: str, log_dir: Path, gpus: int = 2, interval_s: float = 0.5) -> Service:
    """`python -m agent --simulated` as a real process, given the whole comma-separated server list."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix=f"aether-agent-{node}-"))
    svc = Service("agent", args=["--simulated", "--node", node, "--gpus", str(gpus), "--nats", nats_url,
                                 "--http-port", str(port), "--work-dir", str(work), "--heartbeat", "0.5",
                                 "--interval", str(interval_s)],
                  env={"AGENT_KILL_GRACE_S": "2"}, port=port, log_path=log_dir / f"agent-{node}.log")
    svc.work_dir = work  # each job attempt the agent ran leaves <work_dir>/jobs/<job id>.<attempt>/
    return svc.start()


def attempts_run(agents: list[Service]) -> dict[str, int]:
    """Per job id, how many attempts the agents started (their job directories, kept for a day)."""
    out: dict[str, int] = {}
    for a in agents:
        jobs = Path(a.work_dir) / "jobs"
        for d in jobs.iterdir() if jobs.is_dir() else ():
            job_id = d.name.rsplit(".", 1)[0]
            out[job_id] = out.get(job_id, 0) + 1
    return out


def clear_logs(log_dir: Path) -> None:
    """Logs are appended to: start each run of a test with none of an earlier run's."""
    for f in log_dir.glob("*.log"):
        f.unlink()


def metric(text: str, name: str) -> float:
    """An unlabelled metric (or the sum over its labels) in a /metrics text; NaN when absent."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and len(line) > len(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else float("nan")


async def scrape(http: httpx.AsyncClient, url: str, name: str) -> float:
    return metric((await http.get(f"{url}/metrics", timeout=5)).text, name)


async def healthy_gpus(http: httpx.AsyncClient, url: str, nodes: set[str]) -> int:
    r = await http.get(f"{url}/v1/gpus", headers=auth_headers(), timeout=5)
    return sum(1 for g in r.json() if g["node"] in nodes and g["healthy"] and g.get("sample"))


async def submit(http: httpx.AsyncClient, url: str, name: str, command: list[str], within: float = 30) -> str:
    """Submit once the orchestrator takes it (a replica just started may answer 503 for a moment)."""
    body = {"name": name, "command": command, "gpu_mem_mb": 1024, "max_duration_s": 120}

    async def go():
        r = await http.post(f"{url}/v1/jobs", json=body, headers=auth_headers(), timeout=10)
        if r.status_code == 503:
            return None
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    return await until(go, within, f"job {name} accepted")


async def job_states(dsn: str, ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, state FROM jobs WHERE id = ANY($1::text[])", ids)
    finally:
        await conn.close()
    return {r["id"]: r["state"] for r in rows}


async def event_counts(dsn: str, ids: list[str]) -> dict[str, dict[str, int]]:
    """Per job, how many transitions into each state job_events holds."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT job_id, to_state, count(*) AS n FROM job_events "
                                "WHERE job_id = ANY($1::text[]) GROUP BY job_id, to_state", ids)
    finally:
        await conn.close()
    out: dict[str, dict[str, int]] = {j: {} for j in ids}
    for r in rows:
        out[r["job_id"]][r["to_state"]] = r["n"]
    return out


async def rows_per_node(dsn: str, nodes: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT node, count(*) AS n FROM gpu_samples WHERE node = ANY($1::text[]) "
                                "GROUP BY node", nodes)
    finally:
        await conn.close()
    return {n: 0 for n in nodes} | {r["node"]: r["n"] for r in rows}


async def stream_batches(js: JetStreamContext, node: str, within: float = 30) -> list[TelemetryBatch]:
    """Every telemetry batch the stream holds for `node` (an ordered consumer reads them all)."""
    subject = subjects.telemetry(node)
    info = await js.stream_info(subjects.TELEMETRY_STREAM, subjects_filter=subject)
    want = (info.state.subjects or {}).get(subject, 0)
    sub = await js.subscribe(subject, ordered_consumer=True)
    out: list[TelemetryBatch] = []
    try:
        while len(out) < want:
            msg = await sub.next_msg(timeout=within)
            out.append(TelemetryBatch.model_validate_json(msg.data))
    finally:
        await sub.unsubscribe()
    return out


async def connected_to(monitor_ports: list[int], client_name: str) -> int | None:
    """The monitoring port of the server a named client is connected to, if any."""
    async with httpx.AsyncClient(timeout=3) as http:
        for port in monitor_ports:
            try:
                conns = (await http.get(f"http://127.0.0.1:{port}/connz")).json().get("connections") or []
            except httpx.HTTPError:
                continue  # a killed server
            if any(c.get("name") == client_name for c in conns):
                return port
    return None


async def move_leader(nc: NATS, js: JetStreamContext, server: str, stream: str, consumer: str | None = None) -> None:
    """Make `server` the leader of a stream (or of one of its consumers): a preferred-leader step-down."""
    api = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer else \
        f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"

    async def leader() -> str | None:
        info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
        return info.cluster.leader if info.cluster else None

    async def moved():
        if await leader() == server:
            return True
        await nc.request(api, json.dumps({"placement": {"preferred": server}}).encode(), timeout=5)
        return False

    await until(moved, 30, f"{server} to lead {stream}{'/' + consumer if consumer else ''}", interval=0.5)


async def replicated(js: JetStreamContext, stream: str, replicas: int) -> bool:
    """The stream is configured with `replicas` and every follower is current."""
    info = await js.stream_info(stream)
    peers = info.cluster.replicas or [] if info.cluster else []
    return info.config.num_replicas == replicas and info.cluster.leader is not None and \
        len([p for p in peers if p.current and not p.offline]) == replicas - 1
