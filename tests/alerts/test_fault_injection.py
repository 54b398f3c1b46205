"""The simulator's fault injection drives every rule through a real agent and orchestrator: each fault opens
exactly one alert per rule it should trip, on its GPU and nowhere else, and each alert resolves once the fault
clears; the anomaly detector catches a slow temperature drift that no threshold covers."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import httpx
import nats
import pytest
import yaml

from services import subjects
from services.localstack import NatsServer, wait_for
from services.schemas import CommandReply, FaultCommand
from tests.alerts.support import until
from tests.support.procs import Service, auth_headers, orchestrator

GPUS = 7
# GPU index -> the fault injected, and the rules it must trip (each exactly once, each resolved again).
PLAN = {
    0: ({"fault": "overheat", "value": 200, "duration_s": 10}, {"temperature", "thermal_throttling"}),
    1: ({"fault": "ecc_dbe", "count": 1}, {"ecc_dbe", "xid"}),  # the driver raises XID 48 with a DBE
    2: ({"fault": "mem_fill", "value": 97, "duration_s": 6}, {"memory_full"}),
    3: ({"fault": "stuck_util", "value": 100, "duration_s": 6}, {"busy_without_job"}),
    4: ({"fault": "fall_off_bus", "duration_s": 4}, {"gpu_unhealthy", "xid"}),  # XID 79
    5: ({"fault": "silence", "duration_s": 5}, {"telemetry_stale"}),
}
DRIFT_GPU = 6


@pytest.fixture(scope="module")
def cluster(pg_server, tmp_path_factory):
    nats_server = NatsServer().start()
    db = pg_server.create_database("t_alerts_faults_" + datetime.now(UTC).strftime("%H%M%S%f"))
    tmp = tmp_path_factory.mktemp("faults")
    quick = {"for_s": 2, "clear_for_s": 2}
    (tmp / "aether.yaml").write_text(yaml.safe_dump({"orchestrator": {"alerts": {
        "check_interval_s": 0.2,
        "rules": {
            "temperature": quick, "memory_full": quick, "thermal_throttling": quick, "busy_without_job": quick,
            "gpu_unhealthy": {"clear_for_s": 2},
            "ecc_dbe": {"quiet_s": 5}, "xid": {"quiet_s": 5},
            "telemetry_stale": {"gpu_after_s": 2, "node_after_s": 4, "clear_for_s": 1},
            # Warm-up ends after GPU 0's overheat has crossed 85 C (about 6 s after injection): its anomaly
            # detector never judges the rise, which belongs to the temperature alert.
            "anomaly": {"warmup_s": 12, "settle_s": 3, "for_s": 2, "clear_for_s": 3, "fast_halflife_s": 2,
                        "min_interval_s": 0, "baseline_halflife_s": 120},
        }}}}))
    orch = orchestrator(nats_server.url, db, extra_env={"AETHER_CONFIG": str(tmp / "aether.yaml")}).start()
    node = "faults" + datetime.now(UTC).strftime("%H%M%S%f")
    agent = Service("agent", args=["--simulated", "--node", node, "--gpus", str(GPUS), "--nats", nats_server.url,
                                   "--interval", "0.25", "--heartbeat", "1", "--http-port", "0",
                                   "--work-dir", str(tmp / "agent"), "--seed", "5"]).start(health_path=None)
    try:
        def ready():
            r = httpx.get(f"{orch.url}/v1/gpus", headers=auth_headers(), timeout=2)
            return sum(1 for g in r.json() if g["node"] == node and g["sample"]) == GPUS

        wait_for(ready, 40, f"{GPUS} simulated GPUs reporting")
        yield {"url": orch.url, "nats": nats_server.url, "node": node, "agent": agent, "db": db}
    finally:
        agent.stop()
        orch.stop()
        nats_server.cleanup()


async def inject(nc, node: str, gpu: int, **fault) -> None:
    msg = await nc.request(subjects.cmd(node, "fault"), FaultCommand(gpu_index=gpu, **fault).to_bytes(), timeout=5)
    reply = CommandReply.model_validate_json(msg.data)
    assert reply.ok, reply


async def test_each_injected_fault_opens_and_resolves_exactly_one_alert_per_rule(cluster):
    node = cluster["node"]
    nc = await nats.connect(cluster["nats"])
    async with httpx.AsyncClient(base_url=cluster["url"], headers=auth_headers(), timeout=5) as http:
        async def all_alerts() -> list[dict]:
            r = await http.get("/v1/alerts", params={"node": node, "limit": 1000})
            assert r.status_code == 200, r.text
            return r.json()

        async def gpu_view(index: int) -> dict:
            return next(g for g in (await http.get("/v1/gpus")).json() if g["node"] == node and g["index"] == index)

        try:
            for gpu, (fault, _) in PLAN.items():
                await inject(nc, node, gpu, **fault)
            # A critical alert keeps the GPU out of placement while it is open.
            reason = await until(_excluded(gpu_view, 1), 15, "GPU 1 excluded")
            assert reason.startswith("alert ")
            # The drift comes once the detector has learnt GPU 6's idle baseline (settle 3 s + warm-up 12 s):
            # 16 s of its samples stored. 1.5 °C/s for 10 s: +15 °C, far under the 85 °C threshold.
            drift_uuid = (await gpu_view(DRIFT_GPU))["uuid"]
            await until(_samples_stored(cluster["db"], drift_uuid, 16 / 0.25), 40, "GPU 6's baseline samples")
            await inject(nc, node, DRIFT_GPU, fault="drift", metric="temp_c", rate_per_s=1.5, duration_s=10)

            expected = {(f"GPU-{gpu}", rule) for gpu, (_, rules) in PLAN.items() for rule in rules}
            expected.add((f"GPU-{DRIFT_GPU}", "anomaly"))

            async def everything_resolved():
                rows = await all_alerts()
                idx = {g["uuid"]: g["index"] for g in (await http.get("/v1/gpus")).json() if g["node"] == node}
                got = {(f"GPU-{idx.get(r['gpu_uuid'])}", r["rule"]) for r in rows}
                return rows if expected <= got and all(r["state"] == "resolved" for r in rows) else None

            rows = await until(everything_resolved, 60, "every fault's alerts to open and resolve")
            gpus = {g["uuid"]: g for g in (await http.get("/v1/gpus")).json() if g["node"] == node}
            pairs = [(gpus[r["gpu_uuid"]]["index"], r["rule"]) for r in rows]
            assert sorted(pairs) == sorted((int(g[4:]), rule) for g, rule in expected), rows  # each exactly once
            drift = next(r for r in rows if r["rule"] == "anomaly")
            assert drift["metric"] == "temp_c" and drift["value"] < 85.0  # found below the temperature threshold
            assert all(g["excluded_reason"] is None for g in gpus.values())  # every exclusion lifted
        finally:
            await nc.close()


def _excluded(gpu_view, index: int):
    async def check():
        return (await gpu_view(index))["excluded_reason"]
    return check


def _samples_stored(dsn: str, uuid: str, n: float):
    async def check():
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT count(*) FROM gpu_samples WHERE gpu_uuid = $1", uuid) >= n
        finally:
            await conn.close()
    return check
