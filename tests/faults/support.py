"""Helpers of the fault, fuzz and security tests: real processes (orchestrator, agents, AI core), polling with a
deadline, and counting what was kept (rows in PostgreSQL, messages in JetStream, /metrics)."""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import numpy as np
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from services import subjects
from services.localstack import free_port, wait_for
from tests.support.procs import TEST_TOKEN, Service, orchestrator
from tests.support.waiting import until  # noqa: F401  (re-exported for the tests here)

ROOT = Path(__file__).resolve().parents[2]

# Tokens of the tests' principals: tenants' submitters, a viewer, an operator (cluster-wide).
TOKENS = {
    "red": "red-team-submitter-token-000000001",
    "blue": "blue-team-submitter-token-00000002",
    "viewer": "viewer-only-token-000000000000003",
    "operator": "operator-wide-token-00000000000004",
}
# Short timings so node loss and retries show within a test, long enough for a loaded 2-core machine.
FAST = {"HEARTBEAT_TIMEOUT_S": "2.5", "JOB_DISPATCH_TIMEOUT_S": "2", "JOB_RECONCILE_GRACE_S": "2",
        "JOB_LEADER_CHECK_S": "0.5", "SAMPLE_STALE_S": "5"}


def token_env() -> dict[str, str]:
    tokens = [{"token": TOKENS["red"], "role": "submitter", "tenant": "red", "name": "red"},
              {"token": TOKENS["blue"], "role": "submitter", "tenant": "blue", "name": "blue"},
              {"token": TOKENS["viewer"], "role": "viewer", "tenant": None, "name": "viewer"},
              {"token": TOKENS["operator"], "role": "operator", "tenant": None, "name": "operator"}]
    return {"TOKENS": json.dumps(tokens)}


def headers(who: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_TOKEN if who == 'admin' else TOKENS[who]}"}


def node_name(prefix: str = "f") -> str:
    return prefix + uuid.uuid4().hex[:9]


def start_orchestrator(nats_url: str, dsn: str, log_path: Path, *, wait_db: bool = True, port: int | None = None,
                       **env: str) -> Service:
    """A running orchestrator with the tests' tokens and fast timings; by default also wait for its database."""
    svc = orchestrator(nats_url, dsn, extra_env={**FAST, **token_env(), **env}, log_path=log_path, port=port)
    svc.start(timeout=45)
    if wait_db:
        wait_for(lambda: httpx.get(f"{svc.url}/v1/health", timeout=5).json()["database"]["ok"], 45,
                 "the orchestrator's database to be ready")
    return svc


def agent(nats_url: str, node: str, log_dir: Path, *, gpus: int = 2, interval: float = 0.5, heartbeat: float = 0.5,
          work_dir: Path | None = None, port: int | None = None, env: dict[str, str] | None = None) -> Service:
    """`python -m agent --simulated` as a real process (not started yet)."""
    port = port or free_port()
    work = work_dir or Path(tempfile.mkdtemp(prefix=f"aether-agent-{node}-"))
    return Service("agent", args=["--simulated", "--node", node, "--gpus", str(gpus), "--nats", nats_url,
                                  "--http-port", str(port), "--work-dir", str(work), "--heartbeat", str(heartbeat),
                                  "--interval", str(interval)],
                   env={"AGENT_KILL_GRACE_S": "2", **(env or {})}, port=port,
                   log_path=log_dir / f"agent-{node}-{uuid.uuid4().hex[:4]}.log")


def work_dir_of(svc: Service) -> Path:
    return Path(svc.args[svc.args.index("--work-dir") + 1])


def tiny_model(model_dir: Path, seed: int = 7) -> str:
    """A small XGBoost placement model trained in-process on random rows (the simulator takes minutes): enough
    for the AI core to serve real decisions."""
    import xgboost as xgb

    from ai_core import features as F
    from ai_core.registry import Registry

    rng = np.random.default_rng(seed)
    x = rng.random((400, len(F.FEATURES)), dtype=np.float32)
    y = (x[:, 0] - x[:, 1] + 0.1 * rng.standard_normal(400)).astype(np.float32)
    booster = xgb.train({"max_depth": 3, "eta": 0.3, "nthread": 1, "seed": seed},
                        xgb.DMatrix(x, label=y, feature_names=list(F.FEATURES)), num_boost_round=8)
    return Registry(model_dir).save(booster, {"source": "tests/faults tiny model", "rows": 400})


def ai_core(model_dir: Path, log_path: Path, *, nats_url: str | None = None, port: int | None = None) -> Service:
    port = port or free_port()
    env = {"AI_CORE_PORT": str(port), "AI_CORE_MODEL_DIR": str(model_dir), "AI_CORE_PREDICT_THREADS": "1"}
    if nats_url:
        env["NATS_URL"] = nats_url
    else:
        env["AI_CORE_NATS_ENABLED"] = "false"
    return Service("ai_core", env=env, port=port, log_path=log_path)


# --- counting ---------------------------------------------------------------------------------------------

def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` (with these labels) in a service's /metrics; 0 when absent."""
    return _sum_metric(httpx.get(f"{url}/metrics", timeout=5).text, name, labels)


async def ametric(url: str, name: str, **labels: str) -> float:
    """`metric`, without blocking the event loop."""
    async with httpx.AsyncClient(timeout=5) as c:
        return _sum_metric((await c.get(f"{url}/metrics")).text, name, labels)


FINAL_JOB_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


async def job_in(c: httpx.AsyncClient, jid: str, *states: str) -> dict[str, Any] | None:
    """The job (as the admin sees it) if its state is one of `states`; None otherwise, or while the API cannot
    answer (a poller's "not yet")."""
    r = await c.get(f"/v1/jobs/{jid}", headers=headers())
    job = r.json() if r.status_code == 200 else {}
    return job if job.get("state") in states else None


async def aget(url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=kw.pop("timeout", 10)) as c:
        return await c.get(url, **kw)


def _sum_metric(text: str, name: str, labels: dict[str, str]) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    rows = await fetch(dsn, sql, *args)
    return rows[0][0] if rows else None


async def stored_samples(dsn: str, node: str) -> tuple[int, int]:
    """(rows, distinct (gpu_uuid, time)) of one node in gpu_samples."""
    rows = await fetch(dsn, "SELECT count(*), count(DISTINCT (gpu_uuid, time)) FROM gpu_samples WHERE node = $1",
                       node)
    return rows[0][0], rows[0][1]


async def telemetry_in_stream(nats_url: str, node: str, **auth: Any) -> list[dict[str, Any]]:
    """Every telemetry batch JetStream holds for `node`, as {"seq", "time", "samples"}, in stream order: what was
    published (the stream de-duplicates retried publishes by message id)."""
    subject = subjects.telemetry(node)
    nc = await nats.connect(nats_url, **auth)
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.TELEMETRY_STREAM, subjects_filter=subject)
        expected = (info.state.subjects or {}).get(subject, 0)
        out: list[dict[str, Any]] = []
        if not expected:
            return out
        psub = await js.pull_subscribe(subject, stream=subjects.TELEMETRY_STREAM, config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30))
        try:
            while len(out) < expected:
                for m in await psub.fetch(min(500, expected - len(out)), timeout=10):
                    body = orjson.loads(m.data)
                    out.append({"seq": body["seq"], "time": body["time"], "samples": len(body["samples"])})
        finally:
            await psub.unsubscribe()
        return out
    finally:
        await nc.close()


def gaps(seqs: list[int]) -> list[int]:
    """Sequence numbers missing between the first and the last seen."""
    have = set(seqs)
    return [s for s in range(min(have), max(have) + 1) if s not in have] if have else []


def log_lines(path: Path) -> list[dict[str, Any]]:
    """A service's JSON log lines (lines that are not JSON, e.g. a traceback's tail, are skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[-100:]
