"""Telemetry ingest benchmark: real nats-server (file storage) and PostgreSQL (fsync on), the orchestrator's own
Ingest component in this process, TelemetryBatch messages published by a child process.

Phases, in one run: (1) the ceiling: a plain asyncpg COPY of the same rows into the same table; (2) as fast as
possible: a backlog of N messages published first, then drained by ingest (stored samples/s, CPU per 10k);
(3) steady: NODES x GPUS at 1 Hz, each node at its own phase within the second, for S seconds (end-to-end lag
from sample time to row committed: p50/p95/p99, CPU per 10k samples).

    python bench/ingest.py --out bench/results/ingest.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_s, percentiles, print_table, svg_bar_chart, write_json
from services.schemas import TelemetryBatch, TelemetrySample

TEMPLATE_TIME = datetime(2000, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def node_name(i: int) -> str:
    return f"bench-n{i:05d}"


def make_batch(node: str, gpus: int, seq: int, t: datetime) -> TelemetryBatch:
    """A plausible H100 node tick: every field an NVML agent fills."""
    return TelemetryBatch(node=node, seq=seq, time=t, interval_s=1.0, samples=[TelemetrySample(
        time=t, node=node, gpu_index=i, gpu_uuid=f"GPU-{node}-{i:02d}-4c1e-9a7b-{i:012d}", name="NVIDIA H100 80GB HBM3",
        util_gpu_pct=float((seq * 7 + i * 13) % 100), util_mem_pct=30.0, mem_used_mb=40000.0 + i, mem_total_mb=81559.0,
        temp_c=55.0 + i, mem_temp_c=60.0, power_w=420.5, power_limit_w=700.0, energy_mj=1.0e9 + seq * 420_500.0,
        sm_clock_mhz=1980.0, mem_clock_mhz=2619.0, gfx_clock_mhz=1980.0, pstate=0, fan_pct=None,
        throttle_reasons=[] if i % 4 else ["power_cap"], xid_errors=[], ecc_sbe=0, ecc_dbe=0, retired_pages=0,
        remapped_rows=0, pcie_tx_kbps=1200.0, pcie_rx_kbps=3400.0, bar1_used_mb=12.0, bar1_total_mb=131072.0,
        mig_mode=False, pci_bus_id=f"00000000:{0x18 + i:02X}:00.0", processes=[]) for i in range(gpus)])


class Templates:
    """Serialised batches per node with the time swapped in by bytes.replace: publishing 1,250 messages a
    second must not cost the publisher more CPU than the ingest it measures."""

    def __init__(self, nodes: int, gpus: int) -> None:
        self.raw = {node_name(i): make_batch(node_name(i), gpus, 0, TEMPLATE_TIME).to_bytes() for i in range(nodes)}
        self.stamp = iso(TEMPLATE_TIME).encode()
        assert self.stamp in next(iter(self.raw.values())), "template time not found in serialised batch"

    def render(self, node: str, seq: int, t: datetime) -> bytes:
        return self.raw[node].replace(self.stamp, iso(t).encode()).replace(b'"seq":0,', f'"seq":{seq},'.encode(), 1)


# -- publisher (child process) --------------------------------------------------------------------------------

async def publish(url: str, mode: str, nodes: int, gpus: int, count: int, seconds: float) -> None:
    import nats

    from services import subjects
    from services.bus import ensure_telemetry_stream

    tpl = Templates(nodes, gpus)
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    js = nc.jetstream(publish_async_max_pending=4000)
    await ensure_telemetry_stream(js)
    names = [node_name(i) for i in range(nodes)]
    futures = []
    sent = 0
    if mode == "burst":
        ticks = max(1, count // nodes)
        base = datetime.now(UTC) - timedelta(seconds=ticks + 1)
        for k in range(ticks):
            t = base + timedelta(seconds=k)
            for node in names:
                data = tpl.render(node, k, t)
                futures.append(await js.publish_async(subjects.telemetry(node), data,
                                                      headers={"Nats-Msg-Id": f"{node}:{k}"}))
                sent += 1
    else:
        start = time.time() + 0.2
        k = 0
        while True:
            tick0 = start + k
            if tick0 >= start + seconds:
                break
            for i, node in enumerate(names):
                due = tick0 + i / nodes
                delay = due - time.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                t = datetime.now(UTC)
                futures.append(await js.publish_async(subjects.telemetry(node), tpl.render(node, k, t),
                                                      headers={"Nats-Msg-Id": f"{node}:r{k}"}))
                sent += 1
            k += 1
    acks = await asyncio.gather(*futures, return_exceptions=True)
    failed = [a for a in acks if isinstance(a, BaseException)]
    await nc.close()
    print(f"published {sent} failed {len(failed)}", flush=True)
    if failed:
        print(f"first failure: {failed[0]!r}", file=sys.stderr)
        sys.exit(1)


def start_publisher(url: str, mode: str, nodes: int, gpus: int, count: int = 0, seconds: float = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--publisher", mode, "--nats", url, "--nodes", str(nodes),
                             "--gpus", str(gpus), "--count", str(count), "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, text=True)


# -- measurement ------------------------------------------------------------------------------------------------

def reference_us_per_sample(gpus: int) -> float:
    """CPU µs to validate one sample of a batch against the contract, repeated on one message: the same work on
    any machine, so runs on a busy and a quiet machine can be told apart."""
    data = make_batch(node_name(0), gpus, 1, datetime.now(UTC)).to_bytes()
    t0 = time.process_time()
    for _ in range(2000):
        TelemetryBatch.model_validate_json(data)
    return (time.process_time() - t0) / 2000 / gpus * 1e6


async def copy_ceiling(dsn: str, nodes: int, gpus: int, rows_total: int, batch_rows: int) -> float:
    """Rows/s of a plain COPY of the same rows into gpu_samples, in transactions of `batch_rows`."""
    import asyncpg

    from orchestrator.ingest import COLUMNS, sample_row

    ticks = max(1, rows_total // (nodes * gpus))
    base = datetime.now(UTC) - timedelta(days=1)
    rows = [sample_row(s) for k in range(ticks) for i in range(nodes)
            for s in make_batch(node_name(i), gpus, k, base + timedelta(seconds=k)).samples]
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch_rows):
            async with conn.transaction():
                await conn.copy_records_to_table("gpu_samples", records=rows[i:i + batch_rows], columns=COLUMNS)
        elapsed = time.perf_counter() - t0
        await conn.execute("TRUNCATE gpu_samples")
    finally:
        await conn.close()
    return len(rows) / elapsed


async def run(args) -> dict:
    import asyncpg
    import httpx
    import nats

    from orchestrator import dcgm, ingest, partitions
    from orchestrator.auth import Authenticator
    from orchestrator.cluster import Cluster
    from orchestrator.hub import Hub
    from orchestrator.metrics import OrchestratorMetrics
    from orchestrator.migrate import apply_migrations, storage_flavour
    from orchestrator.runtime import Runtime
    from orchestrator.settings import OrchestratorSettings
    from services.bus import ensure_telemetry_stream
    from services.localstack import NatsServer, Postgres

    nodes, gpus = args.nodes, args.gpus
    load_before = os.getloadavg()[0]
    ref_us = reference_us_per_sample(gpus)
    pg = Postgres(durable=True).start()
    # nats-server's JetStream fsyncs every 2 minutes by default; `always` fsyncs each write (power-loss safe).
    ns = NatsServer(config_text=f"jetstream {{ sync_interval: {args.nats_sync} }}\n" if args.nats_sync else None).start()
    result: dict = {}
    try:
        dsn = pg.create_database("bench_ingest")
        await apply_migrations(dsn)
        storage = "timescaledb" if pg.timescale else "postgresql"
        print(f"PostgreSQL {storage} (fsync on) on :{pg.port}, nats-server (file storage) on :{ns.port}", flush=True)

        settings = OrchestratorSettings(database_url=dsn, nats_url=ns.url, auth_enabled=False,
                                        ingest_writers=args.writers, ingest_write_max_msgs=args.write_max_msgs,
                                        ingest_credit=args.credit, ingest_linger_s=args.linger,
                                        **({"ingest_gc_threshold": args.gc_threshold} if args.gc_threshold is not None
                                           else {}))
        copy_rows_per_s = await copy_ceiling(dsn, nodes, gpus, args.copy_rows, args.write_max_msgs * gpus)
        print(f"plain COPY: {copy_rows_per_s:,.0f} rows/s", flush=True)

        nc = await nats.connect(ns.url, pending_size=64 * 1024 * 1024)
        await ensure_telemetry_stream(nc.jetstream())
        burst_msgs = (args.burst_samples // gpus // nodes) * nodes
        pub = start_publisher(ns.url, "burst", nodes, gpus, count=burst_msgs)
        out, _ = await asyncio.to_thread(pub.communicate)
        if pub.returncode:
            raise RuntimeError(f"publisher failed: {out}")
        print(out.strip(), flush=True)

        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=16)
        rt = Runtime(settings=settings, nc=nc, js=nc.jetstream(), pool=pool, http=httpx.AsyncClient(),
                     cluster=Cluster(settings.sample_stale_s), hub=Hub(), metrics=OrchestratorMetrics(),
                     auth=Authenticator(settings))
        async with pool.acquire() as conn:
            rt.storage = await storage_flavour(conn)
        rt.db_ready.set()
        lags: list[float] = []
        lag_times: list[float] = []  # when each lag was recorded: does lag stay flat or grow (falling behind)?
        recording = {"on": False}
        target = {"stored": 0, "reached": asyncio.Event()}

        def on_batches(batches):
            if recording["on"]:
                now = time.time()
                lags.extend(now - b.time.timestamp() for b in batches)
                lag_times.extend(now for _ in batches)
            if rt.components["ingest"].stored >= target["stored"]:
                target["reached"].set()

        async def stored_at_least(n: int, limit_s: float) -> None:
            target["stored"] = n
            target["reached"].clear()
            if rt.components["ingest"].stored < n:
                try:
                    await asyncio.wait_for(target["reached"].wait(), limit_s)
                except TimeoutError:
                    pass

        rt.components["sample_listeners"] = [on_batches]
        await dcgm.start(rt)
        await partitions.start(rt)

        # Phase 2: drain the backlog as fast as possible.
        expected = burst_msgs * gpus
        target["stored"] = expected
        pg_cpu0, nats_cpu0 = cpu_s(pg.proc.pid, tree=True), cpu_s(ns.proc.pid, tree=True)
        cpu0, t0 = time.process_time(), time.perf_counter()
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        await ingest.start(rt)
        ing = rt.components["ingest"]
        await stored_at_least(expected, 120)
        burst_s = time.perf_counter() - t0
        burst_cpu = time.process_time() - cpu0
        if profiler is not None:
            import pstats
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        burst_pg_cpu, burst_nats_cpu = cpu_s(pg.proc.pid, tree=True) - pg_cpu0, cpu_s(ns.proc.pid, tree=True) - nats_cpu0
        if ing.stored < expected:
            raise RuntimeError(f"backlog not drained: {ing.stored}/{expected} samples stored")
        samples_per_s = expected / burst_s
        print(f"backlog: {expected:,} samples in {burst_s:.2f}s = {samples_per_s:,.0f} samples/s", flush=True)

        # Phase 3: NODES x GPUS at 1 Hz.
        stored0 = ing.stored
        batches0 = rt.metrics.ingest_batches._value.get()
        recording["on"] = True
        pg_cpu0, nats_cpu0 = cpu_s(pg.proc.pid, tree=True), cpu_s(ns.proc.pid, tree=True)
        cpu0 = time.process_time()
        pub = start_publisher(ns.url, "rate", nodes, gpus, seconds=args.rate_seconds)
        out, _ = await asyncio.to_thread(pub.communicate)
        if pub.returncode:
            raise RuntimeError(f"publisher failed: {out}")
        published = int(out.split()[1])
        await stored_at_least(stored0 + published * gpus, 30)
        rate_cpu = time.process_time() - cpu0
        rate_pg_cpu, rate_nats_cpu = cpu_s(pg.proc.pid, tree=True) - pg_cpu0, cpu_s(ns.proc.pid, tree=True) - nats_cpu0
        rate_samples = ing.stored - stored0
        steady_batches = rt.metrics.ingest_batches._value.get() - batches0
        async with pool.acquire() as conn:
            in_db = await conn.fetchval("SELECT count(*) FROM gpu_samples")
        lag = percentiles(lags)
        if lag_times:
            t_first = lag_times[0]
            windows: dict[int, list[float]] = {}
            for t, v in zip(lag_times, lags, strict=True):
                windows.setdefault(int((t - t_first) // 5), []).append(v)
            print_table([{"from_s": k * 5, "samples": len(v) * gpus, **{q: round(x * 1000, 1) for q, x in
                          percentiles(v).items()}} for k, v in sorted(windows.items())],
                        title="lag (ms) over the steady phase, 5 s windows")
        result = {
            "samples_per_s": round(samples_per_s),
            "copy_rows_per_s": round(copy_rows_per_s),
            "ratio_to_copy": round(samples_per_s / copy_rows_per_s, 3),
            "lag_p50_ms": round(lag["p50"] * 1000, 1),
            "lag_p95_ms": round(lag["p95"] * 1000, 1),
            "lag_p99_ms": round(lag["p99"] * 1000, 1),
            "cpu_s_per_10k": round(rate_cpu / rate_samples * 10_000, 4) if rate_samples else None,
            "cpu_s_per_10k_backlog": round(burst_cpu / expected * 10_000, 4),
            "postgres_cpu_s_per_10k": round(rate_pg_cpu / rate_samples * 10_000, 4) if rate_samples else None,
            "nats_cpu_s_per_10k": round(rate_nats_cpu / rate_samples * 10_000, 4) if rate_samples else None,
            "postgres_cpu_s_per_10k_backlog": round(burst_pg_cpu / expected * 10_000, 4),
            "nats_cpu_s_per_10k_backlog": round(burst_nats_cpu / expected * 10_000, 4),
            "steady_gpus": nodes * gpus,
            "steady_seconds": args.rate_seconds,
            "steady_samples_published": published * gpus,
            "steady_samples_stored": rate_samples,
            "lag_max_ms": round(max(lags) * 1000, 1) if lags else None,
            "backlog_samples": expected,
            "rows_in_table": in_db,
            "steady_transactions_per_s": round(steady_batches / args.rate_seconds, 1),
            "rows_expected": expected + published * gpus,
            "storage": rt.storage,
            "writers": args.writers,
            "write_max_msgs": args.write_max_msgs,
            "credit": args.credit,
            "linger_s": args.linger,
            "gc_threshold": settings.ingest_gc_threshold,
            "nats_sync_interval": args.nats_sync or "default (2m)",
            "cpus": os.cpu_count(),
            "load_avg_1m_before": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
            "ref_validate_us_per_sample": round(ref_us, 2),
        }
        for t in list(rt.tasks):
            t.cancel()
        await asyncio.gather(*rt.tasks, return_exceptions=True)
        await nc.drain()
        await rt.http.aclose()
        await pool.close()
    finally:
        ns.cleanup()
        pg.cleanup()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/ingest.json")
    p.add_argument("--nodes", type=int, default=1250)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--burst-samples", type=int, default=250_000)
    p.add_argument("--copy-rows", type=int, default=250_000)
    p.add_argument("--rate-seconds", type=float, default=30.0)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--write-max-msgs", type=int, default=1000)
    p.add_argument("--credit", type=int, default=4096)
    p.add_argument("--linger", type=float, default=0.025, help="ingest_linger_s")
    p.add_argument("--gc-threshold", type=int, default=None, help="ingest_gc_threshold (default: the setting's)")
    p.add_argument("--nats-sync", default="", help="JetStream sync_interval (e.g. always, 1s); default: the server's")
    p.add_argument("--profile", action="store_true", help="cProfile the backlog phase (slows it down)")
    # child-process mode
    p.add_argument("--publisher", choices=["burst", "rate"])
    p.add_argument("--nats")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0)
    args = p.parse_args()
    if args.publisher:
        asyncio.run(publish(args.nats, args.publisher, args.nodes, args.gpus, args.count, args.seconds))
        return 0
    t0 = time.monotonic()
    res = asyncio.run(run(args))
    rows = [{"measure": k, "value": v} for k, v in res.items()]
    print_table(rows, title=f"ingest benchmark ({time.monotonic() - t0:.0f}s)")
    lag_row = {"p50": res["lag_p50_ms"], "p95": res["lag_p95_ms"], "p99": res["lag_p99_ms"]}
    print_table([lag_row], title=f"end-to-end lag (ms) at {res['steady_gpus']:,} GPUs x 1 Hz")
    out = write_json(args.out, res)
    svg_bar_chart(Path(out).with_suffix(".svg"), "Telemetry ingest vs plain COPY (rows/s)", ["rows/s"],
                  {"plain COPY": [res["copy_rows_per_s"]], "ingest (NATS -> DB)": [res["samples_per_s"]]})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
