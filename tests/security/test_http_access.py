"""HTTP roles and tenants on the secured cluster: a viewer cannot submit, cancel or acknowledge; a tenant sees and
cancels only its own jobs (another tenant's job is 'not found', exactly like a job that does not exist); the
WebSocket wants a token; no token or password ever reaches a log line, /metrics or /v1/health."""

from __future__ import annotations

import asyncio
import json

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.faults.support import TOKENS, aget, headers, job_in, until
from tests.security.conftest import AGENT_SECRETS, READONLY, SERVICE
from tests.support.procs import TEST_TOKEN

pytestmark = pytest.mark.timeout(120)


async def _state(c: httpx.AsyncClient, jid: str) -> str:
    return (await c.get(f"/v1/jobs/{jid}", headers=headers())).json()["state"]


async def test_viewer_cannot_submit_cancel_or_acknowledge(secured):
    async with httpx.AsyncClient(base_url=secured.orch.url, timeout=10) as c:
        r = await c.post("/v1/jobs", json={"name": "by-viewer", "command": ["true"]}, headers=headers("viewer"))
        assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN")
        r = await c.post("/v1/jobs", json={"name": "own", "command": ["sleep", "30"]}, headers=headers("red"))
        jid = r.json()["job_id"]
        for who in ("viewer",):
            r = await c.delete(f"/v1/jobs/{jid}", headers=headers(who))
            assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN")
        for who in ("viewer", "red"):  # acknowledging alerts is an operator's business
            r = await c.post("/v1/alerts/1/ack", headers=headers(who))
            assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN"), who
        assert (await c.get(f"/v1/jobs/{jid}", headers=headers("viewer"))).status_code == 200  # reading is fine
        assert (await c.delete(f"/v1/jobs/{jid}", headers=headers("red"))).status_code in (200, 202)


async def test_a_tenant_sees_and_cancels_only_its_own_jobs(secured):
    async with httpx.AsyncClient(base_url=secured.orch.url, timeout=10) as c:
        r = await c.post("/v1/jobs", json={"name": "red-secret-work", "command": ["sleep", "60"]},
                         headers=headers("red"))
        assert r.status_code == 201, r.text
        jid = r.json()["job_id"]
        await until(lambda: job_in(c, jid, "RUNNING"), 20, "red's job running")
        missing = "j0123456789abcdef"

        blue = headers("blue")
        for path in (f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/events", f"/v1/jobs/{jid}/logs"):
            mine, absent = await c.get(path, headers=blue), await c.get(path.replace(jid, missing), headers=blue)
            assert (mine.status_code, mine.json()["code"]) == (404, "JOB_NOT_FOUND"), path
            # Indistinguishable from a job that does not exist: its existence is not blue's to learn.
            assert mine.json()["message"].replace(jid, "ID") == absent.json()["message"].replace(missing, "ID")
        r = await c.get(f"/v1/jobs/{jid}/logs", params={"token": TOKENS["blue"], "follow": "true"})
        assert r.status_code == 404
        assert jid not in {j["job_id"] for j in (await c.get("/v1/jobs", headers=blue)).json()}
        r = await c.get("/v1/jobs", params={"tenant": "red"}, headers=blue)
        assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN")
        r = await c.post("/v1/jobs", json={"name": "as-red", "command": ["true"], "tenant": "red"}, headers=blue)
        assert (r.status_code, r.json()["code"], r.json()["field"]) == (403, "FORBIDDEN", "tenant")
        r = await c.delete(f"/v1/jobs/{jid}", headers=blue)
        assert (r.status_code, r.json()["code"]) == (404, "JOB_NOT_FOUND")
        assert await _state(c, jid) == "RUNNING"  # untouched

        # Cluster-wide principals see it; its own tenant lists and cancels it.
        for who in ("viewer", "operator", "admin"):
            assert (await c.get(f"/v1/jobs/{jid}", headers=headers(who))).status_code == 200, who
        assert jid in {j["job_id"] for j in (await c.get("/v1/jobs", headers=headers("red"))).json()}
        assert (await c.delete(f"/v1/jobs/{jid}", headers=headers("red"))).status_code == 202
        await until(lambda: _is(_state(c, jid), "CANCELLED"), 30, "red's job cancelled")


async def _is(value, expected) -> bool:
    return await value == expected


async def test_websocket_wants_a_valid_token(secured):
    base = f"ws://127.0.0.1:{secured.orch.port}/v1/ws"
    for url in (base, base + "?token=not-a-real-token-0123456789"):
        # Closed before the handshake completes: the client sees the upgrade refused (403), or close code 4401.
        with pytest.raises((ConnectionClosed, InvalidStatus)) as refused:
            async with connect(url) as ws:
                await ws.recv()
        exc = refused.value
        assert (exc.response.status_code == 403 if isinstance(exc, InvalidStatus) else exc.rcvd.code == 4401), url
    async with connect(f"{base}?token={TOKENS['viewer']}") as ws:  # and a valid one gets the snapshot
        assert orjson.loads(await ws.recv())["type"] == "snapshot"


async def test_websocket_shows_a_tenant_only_its_own_jobs(secured):
    """Red's job, its events and its live output reach red's dashboard and never blue's: not in the snapshot's
    jobs, not as `job` events, not through a `job:<id>` subscription (refused like a job that does not exist)."""
    async with httpx.AsyncClient(base_url=secured.orch.url, timeout=10) as c:
        script = "import time\nfor i in range(40):\n    print('red-private-line', i, flush=True)\n    time.sleep(0.25)\n"
        r = await c.post("/v1/jobs", json={"name": "red-private", "script": script}, headers=headers("red"))
        jid = r.json()["job_id"]
        seen: dict[str, list[dict]] = {"red": [], "blue": []}
        try:
            async with connect(f"ws://127.0.0.1:{secured.orch.port}/v1/ws?token={TOKENS['blue']}",
                               max_size=None) as blue, \
                    connect(f"ws://127.0.0.1:{secured.orch.port}/v1/ws?token={TOKENS['red']}", max_size=None) as red:
                for ws in (blue, red):
                    await ws.send(json.dumps({"subscribe": f"job:{jid}"}))

                async def listen(ws, who: str):
                    async for raw in ws:
                        seen[who].append(orjson.loads(raw))

                tasks = [asyncio.create_task(listen(blue, "blue")), asyncio.create_task(listen(red, "red"))]
                await until(lambda: job_in(c, jid, "RUNNING"), 20, "red's job running")
                await until(lambda: any(m.get("type") == "log" for m in seen["red"]), 15,
                            "red's own dashboard to get a live line of its job")
                await until(lambda: _seen_long_enough(c, jid), 15, "the job well under way")
                for t in tasks:
                    t.cancel()
        finally:
            await c.delete(f"/v1/jobs/{jid}", headers=headers("red"))
    assert any(m.get("type") == "job" and m["job"]["job_id"] == jid for m in seen["red"]), "red sees its job"
    # GPU and node views name the job ids running there (an operator's view of the cluster, serialised once for
    # every client): an opaque id that every API answers 404 for to another tenant. Nothing else may mention it.
    leaked = [m for m in seen["blue"] if m.get("type") not in ("gpus", "nodes", "snapshot") and jid in json.dumps(m)]
    leaked += [m for m in seen["blue"] if m.get("type") == "snapshot" and jid in json.dumps(m.get("jobs"))]
    assert not leaked, f"{len(leaked)} messages about red's job reached blue: {[m.get('type') for m in leaked]}"
    assert seen["blue"] and seen["blue"][0]["type"] == "snapshot"  # blue was connected and served all along


async def _seen_long_enough(c: httpx.AsyncClient, jid: str) -> bool:
    lines = (await c.get(f"/v1/jobs/{jid}/logs", headers=headers())).json()["lines"]
    return len(lines) >= 8


async def test_no_secret_reaches_logs_metrics_or_health(secured):
    """Use every token the way clients do (header, ?token= for SSE and the WebSocket), wrong ones too, then look
    for any token, password or agent secret in what the services write and serve."""
    wrong = "wrong-guess-token-9f8e7d6c5b4a"
    async with httpx.AsyncClient(base_url=secured.orch.url, timeout=10) as c:
        jid = (await c.post("/v1/jobs", json={"name": "log-scan", "command": ["true"]},
                            headers=headers("red"))).json()["job_id"]
        for token in [*TOKENS.values(), TEST_TOKEN, wrong]:
            await c.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
            await c.get(f"/v1/jobs/{jid}/logs", params={"token": token})
            try:
                async with connect(f"ws://127.0.0.1:{secured.orch.port}/v1/ws?token={token}") as ws:
                    await ws.recv()
            except (ConnectionClosed, InvalidStatus):
                pass
        served = (await c.get("/metrics")).text + (await c.get("/v1/health")).text
    served += (await aget(f"{secured.agent.url}/metrics")).text + (await aget(f"{secured.agent.url}/health")).text
    secrets = {*TOKENS.values(), TEST_TOKEN, wrong, SERVICE[1], READONLY[1],
               *(pw for _, pw in secured.creds.values()), *AGENT_SECRETS.values()}
    written = {p.name: p.read_text(errors="replace") for p in (secured.orch.log_path, secured.agent.log_path)}
    assert sum(len(t) for t in written.values()) > 1000, "the logs should hold something to search"
    for name, text in [*written.items(), ("served", served)]:
        found = [s[:12] + "..." for s in secrets if s in text]
        assert not found, f"{name} holds secrets: {found}"
