"""Alerts and carbon benchmark: CPU per GPU sample of the alert engine (every default rule on), the latency from
a telemetry message to its alert on NATS through a real orchestrator, and carbon report query times over stored
samples (raw and 1-minute rollup). `python bench/alerts.py --out F.json`; bounded (about 1-2 minutes)."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentiles, print_table, write_json


def engine_bench(gpus: int, ticks: int) -> dict:
    """Feed the engine `ticks` seconds of `gpus` GPUs (8 per node), a third of them busy, and time it."""
    from orchestrator.alerts.config import AlertSettings
    from orchestrator.alerts.engine import AlertEngine
    from services.schemas import TelemetryBatch, TelemetrySample

    rng = random.Random(1)
    t0 = datetime.now(UTC) - timedelta(seconds=ticks)
    nodes = [f"bench{n}" for n in range(math.ceil(gpus / 8))]
    batches: list[TelemetryBatch] = []
    for k in range(ticks):
        t = t0 + timedelta(seconds=k)
        for n, node in enumerate(nodes):
            samples = []
            for i in range(8):
                busy = (n * 8 + i) % 3 == 0
                samples.append(TelemetrySample(
                    time=t, node=node, gpu_index=i, gpu_uuid=f"GPU-{node}-{i}", name="NVIDIA H100 80GB HBM3",
                    util_gpu_pct=97.0 if busy else 0.0, util_mem_pct=50.0 if busy else 0.0,
                    mem_used_mb=40_000.0 if busy else 4.0, mem_total_mb=81559.0,
                    temp_c=(78.0 if busy else 38.0) + rng.gauss(0, 0.3), power_w=(690.0 if busy else 70.0)
                    * (1 + rng.gauss(0, 0.01)), power_limit_w=700.0, sm_clock_mhz=1755.0 if busy else 345.0,
                    throttle_reasons=["power_cap"] if busy else ["idle"], ecc_dbe=0, energy_mj=1e9 + k * 1e5))
            batches.append(TelemetryBatch(node=node, seq=k, time=t, samples=samples))
    engine = AlertEngine(AlertSettings())
    per_batch_us: list[float] = []
    cpu0 = time.process_time()
    for b in batches:
        s0 = time.perf_counter()
        for s in b.samples:
            engine.on_sample(s)
        per_batch_us.append((time.perf_counter() - s0) * 1e6 / len(b.samples))
    cpu = time.process_time() - cpu0
    n = sum(len(b.samples) for b in batches)
    us = cpu * 1e6 / n
    p = percentiles(per_batch_us)
    return {"eval_cpu_us_per_sample": us, "eval_us_per_sample_p50": p["p50"], "eval_us_per_sample_p95": p["p95"],
            "eval_us_per_sample_p99": p["p99"], "max_gpus_per_core_1hz": 1e6 / us, "eval_samples": n,
            "open_alerts_after": len(engine.open_alerts())}


async def carbon_bench(gpus: int, minutes: int, runs: int) -> dict:
    """Store `minutes` of 1 Hz samples for `gpus` GPUs, then time carbon reports over them."""
    import asyncpg

    from orchestrator.carbon.config import CarbonSettings
    from orchestrator.carbon.service import CarbonService
    from orchestrator.ingest import COLUMNS, sample_row
    from orchestrator.migrate import apply_migrations
    from services.localstack import Postgres
    from services.schemas import TelemetrySample

    pg = Postgres().start()
    try:
        dsn = pg.create_database("bench_carbon")
        await apply_migrations(dsn)
        conn = await asyncpg.connect(dsn)
        # Recent samples, as a raw query reads them: older chunks are compressed (TimescaleDB) or dropped.
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        start = end - timedelta(minutes=minutes)
        rows = []
        for g in range(gpus):
            energy = 1e9
            for k in range(minutes * 60):
                p = 300.0 + 200.0 * math.sin(k / 300.0 + g)
                energy += p * 1000.0
                rows.append(sample_row(TelemetrySample(time=start + timedelta(seconds=k), node=f"node{g // 8}",
                                                       gpu_index=g % 8, gpu_uuid=f"GPU-{g}", name="x", power_w=p,
                                                       energy_mj=energy)))
        t0 = time.perf_counter()
        await conn.copy_records_to_table("gpu_samples", records=rows, columns=COLUMNS)
        load_s = time.perf_counter() - t0
        storage = await conn.fetchval("SELECT value FROM aether_meta WHERE key = 'storage'")
        if storage == "timescaledb":
            await conn.execute("CALL refresh_continuous_aggregate('gpu_samples_1m', NULL, NULL)")
        else:
            await conn.execute(
                "INSERT INTO gpu_samples_1m (bucket, gpu_uuid, node, n, unhealthy_n, power_w_avg, energy_mj_min, "
                "energy_mj_max) SELECT date_bin('1 minute', time, 'epoch'), gpu_uuid, node, count(*), 0, "
                "avg(power_w), min(energy_mj), max(energy_mj) FROM gpu_samples GROUP BY 1, 2, 3")
        await conn.execute("ANALYZE")
        svc = CarbonService(CarbonSettings())
        out: dict = {"carbon_rows": len(rows), "carbon_load_s": load_s, "storage": storage}
        for name, by, source in (("raw_gpu", "gpu", "raw"), ("raw_cluster", "cluster", "raw"),
                                 ("rollup_gpu", "gpu", "rollup")):
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                await svc.report(conn, by=by, start=start, end=end, source=source)
                times.append((time.perf_counter() - t0) * 1000)
            p = percentiles(times)
            out.update({f"carbon_{name}_ms_p50": p["p50"], f"carbon_{name}_ms_p95": p["p95"],
                        f"carbon_{name}_ms_p99": p["p99"]})
        await conn.close()
        return out
    finally:
        pg.cleanup()


async def latency_bench(n: int) -> dict:
    """Telemetry message with an XID -> the alert on NATS, through nats-server, ingest, the engine and the store."""
    import os
    import tempfile

    import httpx
    import nats
    import yaml

    from services import subjects
    from services.bus import ensure_telemetry_stream
    from services.localstack import NatsServer, Postgres, wait_for
    from services.schemas import TelemetryBatch, TelemetrySample
    from tests.support.procs import auth_headers, orchestrator

    ns = NatsServer().start()
    pg = Postgres().start()
    cfg = Path(tempfile.mkdtemp()) / "aether.yaml"
    cfg.write_text(yaml.safe_dump({"orchestrator": {"alerts": {"rules": {"xid": {"quiet_s": 1}}}}}))
    svc = orchestrator(ns.url, pg.create_database("bench_alerts"),
                       extra_env={"AETHER_CONFIG": str(cfg), "AETHER_CREDENTIALS": os.devnull}).start()
    try:
        wait_for(lambda: httpx.get(f"{svc.url}/v1/health", timeout=2).json()["database"]["ok"], 60, "database")
        nc = await nats.connect(ns.url)
        js = nc.jetstream()
        await ensure_telemetry_stream(js)
        got: dict[str, float] = {}
        arrived = asyncio.Event()

        async def on_alert(msg) -> None:
            got.setdefault(msg.subject.rsplit(".", 1)[1], time.perf_counter())
            arrived.set()

        await nc.subscribe("aether.alerts.critical.*", cb=on_alert)
        lat = []
        for k in range(n):
            node = f"lat{k}"
            now = datetime.now(UTC)
            s = TelemetrySample(time=now, node=node, gpu_index=0, gpu_uuid=f"GPU-{node}", name="x", xid_errors=[79])
            b = TelemetryBatch(node=node, seq=0, time=now, samples=[s])
            sent = time.perf_counter()
            await js.publish(subjects.telemetry(node), b.to_bytes(), headers={"Nats-Msg-Id": b.msg_id()})
            deadline = time.monotonic() + 10
            while node not in got and time.monotonic() < deadline:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
            if node in got:
                lat.append((got[node] - sent) * 1000)
        await nc.close()
        p = percentiles(lat)
        async with httpx.AsyncClient(timeout=5) as http:
            r = (await http.get(f"{svc.url}/metrics", headers=auth_headers())).text
        assert "aether_alerts_opened_total" in r
        return {"alert_latency_ms_p50": p["p50"], "alert_latency_ms_p95": p["p95"], "alert_latency_ms_p99": p["p99"],
                "alert_latency_samples": len(lat)}
    finally:
        svc.stop()
        pg.cleanup()
        ns.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench/results/alerts.json")
    ap.add_argument("--gpus", type=int, default=1000, help="GPUs fed to the engine")
    ap.add_argument("--ticks", type=int, default=60, help="seconds of telemetry fed to the engine")
    ap.add_argument("--carbon-gpus", type=int, default=64)
    ap.add_argument("--carbon-minutes", type=int, default=60)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--latency-alerts", type=int, default=30)
    args = ap.parse_args()
    result = {"bench": "alerts", "time": datetime.now(UTC).isoformat()}
    result.update(engine_bench(args.gpus, args.ticks))
    result.update(asyncio.run(latency_bench(args.latency_alerts)))
    result.update(asyncio.run(carbon_bench(args.carbon_gpus, args.carbon_minutes, args.runs)))
    print_table([
        {"measure": "engine CPU per GPU sample (us)", "p50": result["eval_us_per_sample_p50"],
         "p95": result["eval_us_per_sample_p95"], "p99": result["eval_us_per_sample_p99"],
         "mean": result["eval_cpu_us_per_sample"]},
        {"measure": "telemetry -> alert on NATS (ms)", "p50": result["alert_latency_ms_p50"],
         "p95": result["alert_latency_ms_p95"], "p99": result["alert_latency_ms_p99"]},
        *({"measure": f"carbon {k} over {result['carbon_rows']:,} samples (ms)",
           "p50": result[f"carbon_{k}_ms_p50"], "p95": result[f"carbon_{k}_ms_p95"],
           "p99": result[f"carbon_{k}_ms_p99"]} for k in ("raw_gpu", "raw_cluster", "rollup_gpu")),
    ], columns=["measure", "p50", "p95", "p99", "mean"], title="alerts and carbon")
    print(f"max GPUs per core at 1 Hz (engine only): {result['max_gpus_per_core_1hz']:,.0f}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
