"""A real job on a simulated GPU: its energy from GET /v1/carbon?by=job matches the integral of its GPU's power
over the time it ran (trapezoid of the stored samples, computed here independently) within 1 %."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import numpy as np
import pytest

from services.localstack import NatsServer, wait_for
from tests.alerts.support import until
from tests.support.procs import Service, auth_headers, orchestrator


@pytest.fixture
def cluster(pg_server, tmp_path):
    nats_server = NatsServer().start()
    db = pg_server.create_database("t_alerts_jobenergy_" + datetime.now(UTC).strftime("%H%M%S%f"))
    orch = orchestrator(nats_server.url, db).start()
    node = "energy" + datetime.now(UTC).strftime("%H%M%S%f")
    agent = Service("agent", args=["--simulated", "--node", node, "--gpus", "1", "--nats", nats_server.url,
                                   "--interval", "0.1", "--heartbeat", "1", "--http-port", "0",
                                   "--work-dir", str(tmp_path / "agent"), "--seed", "9"]).start(health_path=None)
    try:
        def ready():
            r = httpx.get(f"{orch.url}/v1/gpus", headers=auth_headers(), timeout=2)
            return any(g["node"] == node and g["sample"] and g["healthy"] for g in r.json())

        wait_for(ready, 40, "the simulated GPU reporting")
        yield {"url": orch.url, "db": db, "node": node}
    finally:
        agent.stop()
        orch.stop()
        nats_server.cleanup()


def trapezoid(ts: np.ndarray, ps: np.ndarray, a: float, b: float) -> float:
    inside = (ts > a) & (ts < b)
    xs = np.concatenate([[a], ts[inside], [b]])
    ys = np.interp(xs, ts, ps)
    return float(np.sum((ys[1:] + ys[:-1]) / 2.0 * np.diff(xs)))


async def test_job_energy_matches_the_integral_of_its_gpu_power(cluster):
    async with httpx.AsyncClient(base_url=cluster["url"], headers=auth_headers(), timeout=10) as http:
        r = await http.post("/v1/jobs", json={"name": "burn", "job_type": "training", "gpu_mem_mb": 2048,
                                              "command": ["python3", "-c", "import time; time.sleep(6)"]})
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        job = await until(lambda: _finished(http, job_id), 60, "the job to finish")
        assert job["state"] == "SUCCEEDED", job
        conn = await asyncpg.connect(cluster["db"])
        try:
            row = await conn.fetchrow("SELECT started_at, finished_at, assignment->0->>'uuid' AS uuid FROM jobs "
                                      "WHERE id = $1", job_id)
            start, end = row["started_at"], row["finished_at"]

            async def samples_after_end():
                return await conn.fetchval("SELECT count(*) FROM gpu_samples WHERE gpu_uuid = $1 AND time > $2",
                                           row["uuid"], end) > 0

            await until(samples_after_end, 15, "samples stored past the job's end")
            rows = await conn.fetch("SELECT extract(epoch FROM time)::float8 AS t, power_w FROM gpu_samples "
                                    "WHERE gpu_uuid = $1 AND time BETWEEN $2 AND $3 ORDER BY time", row["uuid"],
                                    start - timedelta(seconds=5), end + timedelta(seconds=5))
        finally:
            await conn.close()
        ts = np.array([x["t"] for x in rows])
        ps = np.array([x["power_w"] for x in rows])
        expected_j = trapezoid(ts, ps, start.timestamp(), end.timestamp())
        assert ps.max() > 3 * ps.min()  # the job loaded the GPU: the integral is not of an idle board
        rep = (await http.get("/v1/carbon", params={"by": "job", "job": job_id,
                                                     "from": (start - timedelta(minutes=1)).isoformat(),
                                                     "to": (end + timedelta(minutes=1)).isoformat()})).json()
        [mine] = [x for x in rep["rows"] if x["key"] == job_id]
        # The orchestrator integrates the GPU's energy counter (exact for the simulator's piecewise-constant power);
        # the trapezoid of power samples differs from it by at most |P_end - P_start| * interval / 2: under 0.8 %
        # of a 6 s job at 100 ms sampling, typically under 0.1 %.
        assert mine["energy_kwh"] * 3.6e6 == pytest.approx(expected_j, rel=0.01)
        assert mine["co2_g"] == pytest.approx(mine["energy_kwh"] * rep["intensity"]["now_g_per_kwh"], rel=1e-6)
        tenants = (await http.get("/v1/carbon", params={"by": "tenant", "from": (start - timedelta(minutes=1))
                                                        .isoformat(), "to": (end + timedelta(minutes=1)).isoformat()}
                                  )).json()
        assert sum(x["energy_kwh"] for x in tenants["rows"]) == pytest.approx(mine["energy_kwh"], rel=1e-6)


async def _finished(http, job_id: str):
    body = (await http.get(f"/v1/jobs/{job_id}")).json()
    return body if body["state"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT") else None
