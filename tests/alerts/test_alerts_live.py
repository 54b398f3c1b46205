"""Alerts end to end in a real orchestrator process (real NATS, real PostgreSQL), fed crafted telemetry and
heartbeats: stored once, resolved once, listed and filtered, acknowledged, published on NATS and the WebSocket,
counted in /metrics, critical GPUs excluded from placement, webhooks retried; carbon served over HTTP."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import httpx
import nats
import pytest
import websockets
import yaml

from services import subjects
from services.bus import ensure_telemetry_stream
from services.localstack import NatsServer, wait_for
from services.schemas import Alert, GpuInventory, Heartbeat
from tests.alerts.support import WebhookReceiver, ago, batch, sample, timeline, until
from tests.support.procs import TEST_TOKEN, auth_headers, orchestrator

OPERATOR = "test-operator-token-0123456789"
VIEWER = "test-viewer-token-0123456789"


@pytest.fixture(scope="module")
def stack(pg_server, tmp_path_factory):
    """One orchestrator for the module (each test uses nodes of its own), with rules made quick."""
    nats_server = NatsServer().start()
    hook = WebhookReceiver(fail_first=2).start()
    db = pg_server.create_database("t_alerts_live_" + datetime.now(UTC).strftime("%H%M%S%f"))
    cfg = tmp_path_factory.mktemp("alerts") / "aether.yaml"
    cfg.write_text(yaml.safe_dump({"orchestrator": {
        "alerts": {
            "check_interval_s": 0.2,
            "rules": {
                "temperature": {"for_s": 5, "clear_for_s": 5},
                "ecc_dbe": {"quiet_s": 10},
                "xid": {"quiet_s": 10},
                "telemetry_stale": {"gpu_after_s": 2, "node_after_s": 3, "clear_for_s": 0.5},
                "anomaly": {"warmup_s": 120, "for_s": 10, "clear_for_s": 10, "settle_s": 30},
            },
            "webhooks": [{"url": hook.url, "severities": ["critical"], "backoff_initial_s": 0.1,
                          "max_attempts": 5, "secret": "webhook-secret-0123"}],
        },
        "carbon": {"intensity_g_per_kwh": 250.0, "region": "test-grid"},
    }}))
    svc = orchestrator(nats_server.url, db, extra_env={"AETHER_CONFIG": str(cfg), "AETHER_OPERATOR_TOKEN": OPERATOR,
                                                       "AETHER_VIEWER_TOKEN": VIEWER}).start()
    try:
        # Ready when the database is: alerts are loaded and evaluated from then on.
        wait_for(lambda: httpx.get(f"{svc.url}/v1/health", timeout=2).json()["database"]["ok"], 30, "database ok")
        yield {"url": svc.url, "nats": nats_server.url, "hook": hook, "svc": svc}
    finally:
        svc.stop()
        hook.stop()
        nats_server.cleanup()


@pytest.fixture
async def nc(stack):
    conn = await nats.connect(stack["nats"])
    await ensure_telemetry_stream(conn.jetstream())
    yield conn
    await conn.close()


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack["url"], headers=auth_headers(), timeout=5) as client:
        yield client


async def publish(nc, node: str, samples_by_tick: list[list], seq0: int = 0) -> None:
    js = nc.jetstream()
    for k, samples in enumerate(samples_by_tick):
        b = batch(node, seq0 + k, samples)
        await js.publish(subjects.telemetry(node), b.to_bytes(), headers={"Nats-Msg-Id": b.msg_id()})


async def heartbeat(nc, node: str, gpus: int = 1) -> None:
    hb = Heartbeat(node=node, time=datetime.now(UTC), agent_version="test", interval_s=1.0,
                   gpus=[GpuInventory(uuid=f"GPU-{node}-{i}", index=i, name="H100", mem_total_mb=81559)
                         for i in range(gpus)])
    await nc.publish(subjects.heartbeat(node), hb.to_bytes())
    await nc.flush()


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def alerts(http, **params) -> list[dict]:
    r = await http.get("/v1/alerts", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_temperature_alert_opens_and_resolves_once_published_everywhere(stack, nc, http, unique_node):
    seen: list[Alert] = []

    async def on_alert(msg) -> None:
        seen.append(Alert.model_validate_json(msg.data))

    sub = await nc.subscribe(f"aether.alerts.*.{unique_node}", cb=on_alert)
    async with websockets.connect(f"ws://{stack['url'][7:]}/v1/ws?token={TEST_TOKEN}") as ws:
        snapshot = json.loads(await ws.recv())
        assert snapshot["type"] == "snapshot" and isinstance(snapshot["alerts"], list)
        t = timeline(ago(120), 40)
        hot = [[sample(unique_node, ts, temp_c=90.0 if 5 <= i < 20 else 60.0 + (i % 2) * 0.5)]
               for i, ts in enumerate(t[:25])]
        await publish(nc, unique_node, hot)  # hot for 15 s, then 5 s cool: open, not yet resolved
        [opened] = await until(lambda: alerts(http, node=unique_node, rule="temperature", state="open"), 15,
                               "the temperature alert to open")
        # When the condition began (by the samples' clock): t[5], or a little later should ingest have committed
        # the first hot sample after later ones, beyond the reorder window.
        assert opened["severity"] == "warning" and t[5] <= _dt(opened["opened_at"]) <= t[8]
        assert opened["id"] > 0 and opened["value"] == 90.0 and opened["threshold"] == 85.0
        metrics = (await http.get("/metrics")).text
        assert 'aether_alerts_open{rule="temperature",severity="warning"} 1.0' in metrics

        async def ws_alert():
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "alert" and msg["alert"]["node"] == unique_node:
                    return msg

        pushed = await asyncio.wait_for(ws_alert(), 10)
        assert pushed["event"] == "opened" and pushed["alert"]["rule"] == "temperature"
        # Cool for 15 s more (hovering between 80 and 84: under the threshold, above its clear level first).
        cool = [[sample(unique_node, ts, temp_c=83.0 if i < 28 else 60.0)] for i, ts in enumerate(t[25:], start=25)]
        await publish(nc, unique_node, cool, seq0=25)
        [done] = await until(lambda: alerts(http, node=unique_node, rule="temperature", state="resolved"), 15,
                             "the temperature alert to resolve")
        assert done["id"] == opened["id"] and t[28] <= _dt(done["resolved_at"]) <= t[31]
        assert len(await alerts(http, node=unique_node)) == 1  # one alert, whatever the hovering
    await until(lambda: [a.state.value for a in seen] == ["open", "resolved"], 10, "open+resolved on NATS")
    assert {a.id for a in seen} == {opened["id"]}
    await sub.unsubscribe()


async def test_ecc_error_is_critical_excludes_the_gpu_until_it_clears_and_calls_the_webhook(stack, nc, http,
                                                                                              unique_node):
    t = timeline(ago(60), 30)
    uuid = f"GPU-{unique_node}-0"
    await heartbeat(nc, unique_node)
    await publish(nc, unique_node, [[sample(unique_node, ts, ecc_dbe=0 if i < 5 else 1)] for i, ts in enumerate(t[:8])])
    [a] = await until(lambda: alerts(http, node=unique_node, rule="ecc_dbe", state="open"), 15, "ECC alert")
    assert a["severity"] == "critical"

    async def excluded():
        gpu = (await http.get(f"/v1/gpus/{uuid}")).json()
        return gpu["excluded_reason"]

    reason = await until(excluded, 10, "the GPU to be excluded from placement")
    assert reason.startswith("alert ecc_dbe")
    # Quiet for longer than quiet_s (10 s): resolved, and placeable again.
    await publish(nc, unique_node, [[sample(unique_node, ts, ecc_dbe=1)] for ts in t[8:]], seq0=8)
    await until(lambda: alerts(http, node=unique_node, rule="ecc_dbe", state="resolved"), 15, "ECC resolved")
    await until(lambda: _not(excluded), 10, "the exclusion to be lifted")
    # The webhook answered 503 twice: the delivery was retried until it got through, then the resolution too.
    hook: WebhookReceiver = stack["hook"]
    calls, received = await until(lambda: (r := hook.for_node(unique_node))[1][1:] and r, 15,
                                  "both webhook deliveries")
    assert [d["event"] for d in received] == ["opened", "resolved"]
    assert len(calls) == 4 and received[0]["alert"]["id"] == a["id"]
    assert calls[0]["headers"]["X-Aether-Signature"].startswith("sha256=")
    metrics = (await http.get("/metrics")).text
    assert 'aether_alert_webhook_deliveries_total{result="delivered"}' in metrics


async def _not(fn):
    return not await fn()


async def test_xid_and_fallen_gpu_are_critical_at_once(stack, nc, http, unique_node):
    t = timeline(ago(90), 45)
    ticks = [[sample(unique_node, ts, healthy=not (3 <= i < 6), xid_errors=[79] if i == 3 else [],
                     **({"temp_c": None, "power_w": None, "error": "GPU is lost"} if 3 <= i < 6 else {}))]
             for i, ts in enumerate(t)]
    await publish(nc, unique_node, ticks)
    got = await until(lambda: _rules(http, unique_node, {"xid", "gpu_unhealthy"}, state="resolved"), 15,
                      "xid and gpu_unhealthy alerts, resolved")
    by_rule = {r["rule"]: r for r in got}
    assert len(got) == 2
    assert by_rule["xid"]["severity"] == "critical" and "79" in by_rule["xid"]["message"]
    assert _dt(by_rule["xid"]["opened_at"]) == t[3]  # an event: its own time, even if judged late
    assert _dt(by_rule["xid"]["resolved_at"]) == t[3] + timedelta(seconds=10)
    assert by_rule["gpu_unhealthy"]["severity"] == "critical" and "GPU is lost" in by_rule["gpu_unhealthy"]["message"]
    assert t[3] <= _dt(by_rule["gpu_unhealthy"]["opened_at"]) <= t[5]
    assert t[6] <= _dt(by_rule["gpu_unhealthy"]["resolved_at"]) <= t[9]


async def _rules(http, node: str, wanted: set[str], **params):
    rows = await alerts(http, node=node, **params)
    return rows if wanted <= {r["rule"] for r in rows} else None


async def test_ack_needs_the_operator_role_and_keeps_the_first_ack(stack, nc, http, unique_node):
    t = timeline(ago(30), 10)
    await publish(nc, unique_node, [[sample(unique_node, ts, temp_c=95.0)] for ts in t])
    [a] = await until(lambda: alerts(http, node=unique_node, state="open", severity="warning"), 15, "alert")
    async with httpx.AsyncClient(base_url=stack["url"], timeout=5) as anon:
        r = await anon.post(f"/v1/alerts/{a['id']}/ack", headers=auth_headers(VIEWER))
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"
        r = await anon.post(f"/v1/alerts/{a['id']}/ack")
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
        r = await anon.post(f"/v1/alerts/{a['id']}/ack", headers=auth_headers(OPERATOR))
        assert r.status_code == 200, r.text
        acked = r.json()
        assert acked["acknowledged_by"] == "operator" and acked["state"] == "open"
        again = (await anon.post(f"/v1/alerts/{a['id']}/ack", headers=auth_headers(TEST_TOKEN))).json()
        assert again["acknowledged_at"] == acked["acknowledged_at"] and again["acknowledged_by"] == "operator"
        r = await anon.post("/v1/alerts/999999999/ack", headers=auth_headers(OPERATOR))
        assert r.status_code == 404 and r.json()["code"] == "ALERT_NOT_FOUND"
        r = await anon.get("/v1/alerts", params={"severity": "loud"}, headers=auth_headers(VIEWER))
        assert r.status_code == 422 and r.json()["code"] == "INVALID_REQUEST"
    [listed] = await alerts(http, node=unique_node, state="open")
    assert listed["acknowledged_by"] == "operator"
    assert await alerts(http, node=unique_node, severity="critical") == []


async def test_stale_gpu_and_silent_node(stack, nc, http, unique_node):
    await heartbeat(nc, unique_node, gpus=2)
    stop = asyncio.Event()

    async def beat():
        k = 0
        while not stop.is_set():
            await heartbeat(nc, unique_node, gpus=2)
            now = datetime.now(UTC)
            # GPU 1 keeps reporting; GPU 0 only for the first second.
            ticks = [sample(unique_node, now, 1)] + ([sample(unique_node, now, 0)] if k < 2 else [])
            await publish(nc, unique_node, [ticks], seq0=k)
            k += 1
            await asyncio.sleep(0.5)

    task = asyncio.create_task(beat())
    try:
        [a] = await until(lambda: alerts(http, node=unique_node, rule="telemetry_stale"), 15, "GPU stale alert")
        assert a["gpu_uuid"] == f"GPU-{unique_node}-0" and a["state"] == "open"
    finally:
        stop.set()
        await task
    # Everything stops: the node goes silent (one node alert); the GPU alert stays as it was.
    [n] = await until(lambda: alerts(http, node=unique_node, rule="node_silent"), 15, "node silent alert")
    assert n["severity"] == "critical" and n["gpu_uuid"] is None
    assert len(await alerts(http, node=unique_node, rule="telemetry_stale")) == 1
    await heartbeat(nc, unique_node, gpus=2)
    await publish(nc, unique_node, [[sample(unique_node, datetime.now(UTC), i) for i in range(2)]], seq0=1000)
    await until(lambda: alerts(http, node=unique_node, rule="node_silent", state="resolved"), 15, "node back")


async def test_anomaly_detector_catches_a_drift_below_every_threshold(stack, nc, http, unique_node):
    t = timeline(ago(400), 380)
    rng = random.Random(3)

    def temp(i: int) -> float:
        return 60.0 + (0.25 * (i - 200) if 200 <= i < 260 else 0.0) + rng.gauss(0, 0.3)  # at most 75 °C

    await publish(nc, unique_node, [[sample(unique_node, ts, temp_c=temp(i))] for i, ts in enumerate(t)])
    rows = await until(lambda: alerts(http, node=unique_node, rule="anomaly", state="resolved"), 20,
                       "the anomaly to open and resolve")
    assert len(rows) == 1 and rows[0]["metric"] == "temp_c"
    assert t[200] < datetime.fromisoformat(rows[0]["opened_at"]) < t[260]
    assert [r["rule"] for r in await alerts(http, node=unique_node)] == ["anomaly"]  # no threshold fired


async def test_carbon_report_over_http(stack, nc, http, unique_node):
    t = timeline(ago(200), 101)
    await publish(nc, unique_node, [[sample(unique_node, ts, power_w=360.0)] for ts in t])
    params = {"from": t[0].isoformat(), "to": t[100].isoformat(), "by": "gpu", "gpu": f"GPU-{unique_node}-0"}

    async def report():
        r = await http.get("/v1/carbon", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        return body if body["rows"] and body["rows"][0]["covered_s"] >= 100 else None

    body = await until(report, 15, "the samples to be integrated")
    assert body["rows"][0]["energy_kwh"] == pytest.approx(360.0 * 100 / 3.6e6, rel=1e-6)
    assert body["rows"][0]["co2_g"] == pytest.approx(body["rows"][0]["energy_kwh"] * 250.0, rel=1e-6)
    assert body["intensity"]["region"] == "test-grid" and body["source"] == "raw"
    r = await http.get("/v1/carbon", params={"from": t[10].isoformat(), "to": t[0].isoformat()})
    assert r.status_code == 422 and r.json()["field"] == "to"
    r = await http.get("/v1/carbon", params={"from": "2026-01-01T00:00:00"})
    assert r.status_code == 422 and r.json()["code"] == "INVALID_REQUEST"
    r = await http.get("/v1/carbon/intensity")
    assert r.status_code == 200 and r.json()["now"]["g_per_kwh"] == 250.0
    series = (await http.get("/v1/carbon", params={"from": t[0].isoformat(), "to": t[100].isoformat(),
                                                    "bucket": 60})).json()["series"]
    assert sum(p["energy_kwh"] for p in series) >= 360.0 * 100 / 3.6e6 * 0.999
