"""The job API's answers: tokens, invalid specs naming the field, size bound, every refusal code, tenants,
cancel, idempotent submission. Against a real orchestrator, NATS and PostgreSQL, with protocol-level agents."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import nats

from services.localstack import NatsServer
from services.schemas import JobState
from tests.jobs.fake_agent import FakeAgent
from tests.jobs.support import (
    fake_agent,
    headers,
    metric,
    node_name,
    start_orchestrator,
    submit_when_ready,
    until,
    wait_state,
)


def holding(gate: asyncio.Event):
    async def behaviour(agent, run):
        await agent.log(run, "stdout", "holding")
        await gate.wait()
        return JobState.SUCCEEDED, 0, {"held": True}
    return behaviour


CMD = {"command": ["true"]}


async def test_tokens_and_roles(http):
    assert (await http.post("/v1/jobs", json={"name": "x", **CMD})).json()["code"] == "UNAUTHORIZED"
    r = await http.post("/v1/jobs", json={"name": "x", **CMD}, headers={"Authorization": "Bearer wrong-token-123456"})
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
    assert (await http.get("/v1/jobs")).status_code == 401
    r = await http.post("/v1/jobs", json={"name": "x", **CMD}, headers=headers("viewer"))
    assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"
    assert (await http.get("/v1/jobs", headers=headers("viewer"))).status_code == 200


async def test_invalid_specs_are_refused_naming_the_field(http):
    cases = [
        ({"name": "x", **CMD, "bogus": 1}, "bogus"),
        ({"name": "../../etc/passwd", **CMD}, "name"),
        ({"name": "x", **CMD, "gpus": -1}, "gpus"),
        ({"name": "x", **CMD, "gpus": 100000}, "gpus"),
        ({"name": "x", **CMD, "env": {"BIG": "x" * 40000}}, "env"),
        ({"name": "x", **CMD, "env": {"LD_PRELOAD": "/tmp/evil.so"}}, "env"),
        ({"name": "x", **CMD, "max_duration_s": 10 ** 9}, "max_duration_s"),
        ({"name": "x", **CMD, "requirements": ["-r /etc/shadow"]}, "requirements"),
        ({"name": "x", "command": ["a"], "script": "print(1)"}, None),
        ({"command": ["a"]}, "name"),
        ({"name": "x", "script": "print(1)\x00"}, "script"),  # PostgreSQL cannot store a NUL: refused up front
        ({"name": "x", **CMD, "model": "m\x00"}, "model"),
    ]
    for body, field in cases:
        r = await http.post("/v1/jobs", json=body, headers=headers())
        assert r.status_code == 422, (body, r.text)
        err = r.json()
        assert err["code"] == "INVALID_JOB" and err["message"], err
        if field is not None:
            assert err["field"] == field, (body, err)
    r = await http.post("/v1/jobs", content=b"{not json", headers={**headers(), "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "INVALID_JOB"
    r = await http.post("/v1/jobs", json={"name": "x", **CMD}, headers={**headers(), "Idempotency-Key": "a b"})
    assert r.status_code == 422 and r.json()["field"] == "Idempotency-Key"
    for query in ("tenant=a%00b", "state=BOGUS", "limit=0", "limit=100000"):
        r = await http.get(f"/v1/jobs?{query}", headers=headers())
        assert r.status_code == 422 and r.json()["code"] in ("INVALID_JOB", "INVALID_REQUEST"), (query, r.text)


async def test_request_body_is_size_bounded(http):
    r = await http.post("/v1/jobs", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                        headers={**headers(), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE"


async def test_resource_exhausted_not_found_and_tenant_isolation(http, nc):
    async with fake_agent(nc, http, gpus=2, mem_total_mb=16000) as agent:
        jid = await submit_when_ready(http, {"name": "mine", **CMD}, who="alpha")
        for body in ({"name": "huge", **CMD, "gpu_mem_mb": 1_000_000}, {"name": "wide", **CMD, "gpus": 16}):
            r = await http.post("/v1/jobs", json=body, headers=headers("alpha"))
            assert r.status_code == 503 and r.json()["code"] == "RESOURCE_EXHAUSTED", r.text
        r = await http.get("/v1/jobs/j0123456789abcdef", headers=headers())
        assert r.status_code == 404 and r.json() == {"code": "JOB_NOT_FOUND", "message": r.json()["message"],
                                                     "job_id": "j0123456789abcdef"}
        assert (await http.get("/v1/jobs/..%2Fetc", headers=headers())).status_code == 404
        # Another tenant neither sees nor cancels it; its owner and an admin do.
        assert (await http.get(f"/v1/jobs/{jid}", headers=headers("beta"))).json()["code"] == "JOB_NOT_FOUND"
        assert (await http.delete(f"/v1/jobs/{jid}", headers=headers("beta"))).status_code == 404
        assert (await http.get(f"/v1/jobs/{jid}/logs", headers=headers("beta"))).status_code == 404
        assert (await http.get(f"/v1/jobs/{jid}", headers=headers("alpha"))).json()["tenant"] == "alpha"
        assert jid not in {j["job_id"] for j in (await http.get("/v1/jobs", headers=headers("beta"))).json()}
        assert jid in {j["job_id"] for j in (await http.get("/v1/jobs", headers=headers("alpha"))).json()}
        r = await http.get("/v1/jobs?tenant=alpha", headers=headers("beta"))
        assert r.status_code == 403
        r = await http.post("/v1/jobs", json={"name": "x", **CMD, "tenant": "alpha"}, headers=headers("beta"))
        assert r.status_code == 403 and r.json()["field"] == "tenant"
        done = await wait_state(http, jid, "SUCCEEDED")
        assert done["result"] == {"ok": True, "job": jid} and done["gpu"]["node"] == agent.node


async def test_tenant_quotas(http, nc):
    gate = asyncio.Event()
    async with fake_agent(nc, http, gpus=2, behaviour=holding(gate)):
        first = await submit_when_ready(http, {"name": "q1", **CMD}, who="quota1")
        r = await http.post("/v1/jobs", json={"name": "q2", **CMD}, headers=headers("quota1"))
        assert r.status_code == 429 and r.json()["code"] == "TENANT_QUOTA_EXCEEDED", r.text
        two = await submit_when_ready(http, {"name": "g2", **CMD, "gpus": 2}, who="gpuq")
        r = await http.post("/v1/jobs", json={"name": "g1", **CMD}, headers=headers("gpuq"))
        assert r.status_code == 429 and r.json()["code"] == "TENANT_QUOTA_EXCEEDED"
        assert r.json()["details"]["max_gpus"] == 2
        gate.set()
        await wait_state(http, first, "SUCCEEDED")
        await wait_state(http, two, "SUCCEEDED")
        r = await http.post("/v1/jobs", json={"name": "q3", **CMD}, headers=headers("quota1"))
        assert r.status_code == 201  # a finished job frees its quota
        metrics = (await http.get("/metrics")).text
        assert metric(metrics, 'aether_jobs_refused_total{code="TENANT_QUOTA_EXCEEDED"}') == 2


async def test_cancel_queued_and_running_jobs(http, nc):
    gate = asyncio.Event()
    async with fake_agent(nc, http, gpus=1, mem_total_mb=16000, behaviour=holding(gate)) as agent:
        running = await submit_when_ready(http, {"name": "long", **CMD, "gpu_mem_mb": 10000})
        await wait_state(http, running, "RUNNING")
        queued = await submit_when_ready(http, {"name": "waits", **CMD, "gpu_mem_mb": 10000})
        assert (await wait_state(http, queued, "PENDING"))["node"] is None
        r = await http.delete(f"/v1/jobs/{queued}", headers=headers())
        assert r.status_code == 200 and r.json()["state"] == "CANCELLED"
        r = await http.delete(f"/v1/jobs/{running}", headers=headers())
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        done = await wait_state(http, running, "CANCELLED")
        assert done["cancel_requested"] and [c.job_id for c in agent.cancels] == [running]
        r = await http.delete(f"/v1/jobs/{running}", headers=headers())
        assert r.status_code == 409 and r.json()["code"] == "JOB_NOT_CANCELLABLE" and r.json()["job_id"] == running


async def test_idempotent_submission(http, nc):
    async with fake_agent(nc, http) as agent:
        key = uuid.uuid4().hex
        first = await submit_when_ready(http, {"name": "once", **CMD})
        h = {**headers(), "Idempotency-Key": key}
        r1 = await http.post("/v1/jobs", json={"name": "once", **CMD}, headers=h)
        r2 = await http.post("/v1/jobs", json={"name": "once", **CMD}, headers=h)
        assert r1.status_code == 201 and r2.status_code == 200
        assert r1.json()["job_id"] == r2.json()["job_id"] != first
        await wait_state(http, r1.json()["job_id"], "SUCCEEDED")
        assert sum(1 for d in agent.dispatches if d.job_id == r1.json()["job_id"]) == 1


async def test_queue_full_and_no_workers(pg_server, tmp_path):
    """Its own orchestrator: the queue limit is cluster-wide, and 'no workers' needs a cluster without any."""
    ns = NatsServer().start()
    orch = start_orchestrator(ns.url, pg_server.create_database("qfull_" + uuid.uuid4().hex[:8]), tmp_path,
                              JOB_MAX_QUEUE="2")
    nc = await nats.connect(ns.url)
    gate = asyncio.Event()
    try:
        async with httpx.AsyncClient(base_url=orch.url, timeout=10) as http:
            async def refused():
                r = await http.post("/v1/jobs", json={"name": "x", **CMD}, headers=headers())
                return r if r.status_code == 503 and r.json()["code"] == "NO_GPU_WORKERS" else None

            r = await until(refused, 20, "NO_GPU_WORKERS once the database is up")
            assert r.json()["message"] == "No GPU workers available"
            agent = await FakeAgent(nc, node_name(), gpus=1, mem_total_mb=16000, behaviour=holding(gate)).start()
            body = {"name": "big", **CMD, "gpu_mem_mb": 10000}
            first = await submit_when_ready(http, body)
            await wait_state(http, first, "RUNNING")
            waiting = [await submit_when_ready(http, body) for _ in range(2)]
            r = await http.post("/v1/jobs", json=body, headers=headers())
            assert r.status_code == 429 and r.json()["code"] == "QUEUE_FULL", r.text
            for jid in waiting:  # they fit nowhere right now: they wait, nothing is over-committed
                assert (await wait_state(http, jid, "PENDING"))["node"] is None
            gate.set()
            for jid in [first, *waiting]:
                await wait_state(http, jid, "SUCCEEDED")
            assert max(agent.max_mem_seen.values()) <= 16000
            await agent.stop()
    finally:
        await nc.close()
        orch.stop()
        ns.cleanup()


async def test_metrics_cover_jobs(http, nc):
    async with fake_agent(nc, http):
        jid = await submit_when_ready(http, {"name": "measured", **CMD})
        await wait_state(http, jid, "SUCCEEDED")

        async def exported():
            text = (await http.get("/metrics")).text
            return text if metric(text, 'aether_jobs_finished_total{state="SUCCEEDED"}') >= 1 else None

        text = await until(exported, 10, "a finished job counted")
    for name in ("aether_jobs_active", "aether_jobs_queue_depth", "aether_jobs_success_ratio",
                 "aether_jobs_mean_duration_seconds", "aether_job_duration_seconds_count",
                 "aether_placement_latency_seconds_count", "aether_jobs_submitted_total",
                 "aether_scheduler_leader"):
        assert metric(text, name) == metric(text, name), f"{name} missing from /metrics"  # NaN when absent
    assert metric(text, "aether_placement_latency_seconds_count") >= 1
    assert metric(text, "aether_scheduler_leader") == 1.0


async def test_the_submission_fast_lane_answers_as_the_route_does(http, nc):
    """POST /v1/jobs is served by a fast lane in front of the framework (orchestrator/api/fastlane.py); a query
    string or a browser's Origin sends the same request through the FastAPI route. Both answer alike."""
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    cases = [
        ({}, {"name": "x", **CMD, "bogus": 1}),
        ({}, {"name": "x", **CMD, "gpus": -1}),
        ({}, {"command": ["a"]}),
        ({}, b"{not json"),
        ({}, b""),
        ({}, big),
        ({"Authorization": ""}, {"name": "x", **CMD}),
        ({"Authorization": "Bearer wrong-token-123456"}, {"name": "x", **CMD}),
        (headers("viewer"), {"name": "x", **CMD}),
        ({"Idempotency-Key": "a b"}, {"name": "x", **CMD}),
        ({}, {"name": "x", **CMD, "gpu_mem_mb": 10 ** 9}),
    ]

    async def post(path: str, extra: dict, body, origin: bool = False) -> httpx.Response:
        h = {**headers(), "content-type": "application/json", **extra}
        if origin:
            h["Origin"] = "http://127.0.0.1:3000"
        h = {k: v for k, v in h.items() if v}
        return await http.post(path, content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                               headers=h)

    async with fake_agent(nc, http):
        await submit_when_ready(http, {"name": "warm", **CMD})
        for extra, body in cases:
            fast = await post("/v1/jobs", extra, body)
            routed = await post("/v1/jobs?via=route", extra, body)
            assert fast.status_code == routed.status_code >= 400, (extra, fast.text, routed.text)
            assert fast.json() == routed.json(), (fast.text, routed.text)
            assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
        for via, origin in (("/v1/jobs", False), ("/v1/jobs?via=route", False), ("/v1/jobs", True)):
            key = uuid.uuid4().hex
            r1 = await post(via, {"Idempotency-Key": key}, {"name": "lane", **CMD}, origin)
            r2 = await post(via, {"Idempotency-Key": key}, {"name": "lane", **CMD}, origin)
            # (the repeat answers the job's state now, which may have moved on)
            assert (r1.status_code, r2.status_code) == (201, 200), (via, r1.text, r2.text)
            assert r1.json()["job_id"] == r2.json()["job_id"]
            assert r1.json()["state"] in ("PENDING", "SCHEDULED")  # (placed as it was stored, when it can start now)
            # A browser's request took the framework's way: the CORS answer is there.
            assert ("access-control-allow-origin" in r1.headers) == origin, r1.headers
            await wait_state(http, r1.json()["job_id"], "SUCCEEDED")
