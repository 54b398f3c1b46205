"""Scale benchmark: the whole orchestrator (real process: ingest, cluster model, scheduler, alerts, carbon, API) with
the AI core, real nats-server and PostgreSQL (fsync on), fed by simulated nodes of 8 GPUs at 1 Hz while jobs arrive
continuously over HTTP.

    python bench/scale.py --out bench/results/scale.json [--duration 300] [--step-duration 30] [--max-gpus 32000]

Nodes: protocol-level fake agents (tests/jobs/fake_agent.py: heartbeats every 5 s with inventory and running jobs,
run/cancel request-reply, RUNNING/SUCCEEDED reports and a log line on the real subjects), all in ONE separate
process (`--fleet`), since `python -m agent` hosts one node per process and 125+ Python processes would not fit on
this machine. That process also publishes every node's TelemetryBatch (8 full H100 samples, one JetStream message
per node per second, each node at its own phase in the second, acks awaited asynchronously) from a serialised
template with the time swapped in, so the load generator costs far less CPU than what it measures. A sample is
dated by its tick on the 1 s grid, as a real agent's is, so a generator that falls behind shows up as lag too.

Measured inside the orchestrator by a probe added to its component list in this benchmark's child process only:
ingest lag = sample time -> its batch committed and applied to the cluster model (the moment listeners are called),
and placement latency = the scheduler's call to its placer (AI core request, or the heuristic fallback).

No dashboard is connected; /metrics is scraped every 15 s as Prometheus would.

Phases: ~100 GPUs (13 nodes) for --step-duration; 1,000 GPUs (125 nodes) for --duration (the headline figures);
then the search: GPU count doubled while p99 lag < 1 s and the stream backlog stays under one second of messages,
then bisected to within --resolution (or 10 %). Database growth per GPU-day is the growth of gpu_samples (rows and
indexes, uncompressed) over the 1,000-GPU window. Then (TimescaleDB) one simulated hour of a node (agent/sim.py
physics, one full 1-hour chunk) is compressed with the table's own settings, and the 1-minute rollup materialised,
for their sizes per GPU-day. Bounded by --time-limit; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import ROOT, cpu_s, percentiles, print_table, svg_bar_chart, write_json

GPUS_PER_NODE = 8
TOKEN = "bench-scale-admin-token-0123456789"
TEMPLATE_TIME = datetime(2000, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
INGEST_CONSUMER = "aether-ingest"


def node_name(i: int) -> str:
    return f"scale-n{i:05d}"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


# --- the orchestrator child process, with a probe ------------------------------------------------------------
class Probe:
    """Exact per-batch ingest lags and per-job placement times, read (and cleared) by the benchmark over HTTP."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.samples = 0
        self.placements_ms: list[float] = []

    def on_batches(self, batches: list) -> None:
        now = time.time()
        for b in batches:
            self.lags_ms.append((now - b.time.timestamp()) * 1000.0)
            self.samples += len(b.samples)

    async def start(self, rt) -> None:
        rt.components.setdefault("sample_listeners", []).append(self.on_batches)
        jobs = rt.components.get("jobs")
        if jobs is None:
            return
        placement = jobs.placement
        inner = placement.place
        probe = self

        async def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return await inner(*args, **kw)
            finally:
                probe.placements_ms.append((time.perf_counter() - t0) * 1000.0)

        placement.place = timed  # the scheduler calls it through this same object

    def read(self) -> dict:
        out = {"lags_ms": self.lags_ms, "samples": self.samples, "placements_ms": self.placements_ms}
        self.lags_ms, self.samples, self.placements_ms = [], 0, []
        return out


def serve_orchestrator() -> None:
    """`python -m orchestrator`, plus the probe and GET /bench/probe; exits when the benchmark goes away."""
    import uvicorn

    from orchestrator import app as app_module
    from orchestrator.settings import OrchestratorSettings
    from services import jsonlog

    settings = OrchestratorSettings.load()
    jsonlog.configure("orchestrator", settings.log_level)
    probe = Probe()
    app_module.COMPONENTS.append(probe)  # anything with `async start(rt)` is a component
    app = app_module.create_app(settings)

    async def read_probe() -> dict:  # async: runs on the loop the probe's lists are filled on
        return probe.read()

    app.add_api_route("/bench/probe", read_probe, methods=["GET"])
    parent = os.getppid()

    def orphan_watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphan_watch, daemon=True).start()
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=5)


# --- the fleet child process ---------------------------------------------------------------------------------
def template(node: str) -> bytes:
    """One tick of an 8-GPU H100 node with every field an NVML agent fills; time and seq are swapped in later."""
    from services.schemas import GpuProcess, TelemetryBatch, TelemetrySample
    from tests.jobs.fake_agent import GPU_NAME

    t = TEMPLATE_TIME
    return TelemetryBatch(node=node, seq=0, time=t, interval_s=1.0, samples=[TelemetrySample(
        time=t, node=node, gpu_index=i, gpu_uuid=f"GPU-{node}-{i}", name=GPU_NAME, util_gpu_pct=float(20 + 9 * i),
        util_mem_pct=30.0, mem_used_mb=2048.0 + i, mem_total_mb=81559.0, temp_c=45.0 + i, mem_temp_c=50.0,
        power_w=220.5 + i, power_limit_w=700.0, energy_mj=1.0e9, sm_clock_mhz=1980.0, mem_clock_mhz=2619.0,
        gfx_clock_mhz=1980.0, pstate=0, fan_pct=None, throttle_reasons=[] if i % 4 else ["power_cap"], xid_errors=[],
        ecc_sbe=0, ecc_dbe=0, retired_pages=0, remapped_rows=0, pcie_tx_kbps=1200.0, pcie_rx_kbps=3400.0,
        bar1_used_mb=12.0, bar1_total_mb=131072.0, mig_mode=False, pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
        # Most GPUs of a busy cluster run a process or two: the JSON column is a good part of a row's size.
        processes=[GpuProcess(pid=40000 + 10 * i + k, used_mem_mb=1024.0 * (k + 1)) for k in range(i % 3)])
        for i in range(GPUS_PER_NODE)]).to_bytes()


async def fleet(args: argparse.Namespace) -> None:
    """Nodes on command: reads `nodes N` / `stats` lines on stdin, answers one JSON line each; EOF ends it."""
    import nats

    from services import subjects
    from services.bus import ensure_jobs_stream, ensure_telemetry_stream
    from services.schemas import JobState
    from tests.jobs.fake_agent import FakeAgent

    class FleetAgent(FakeAgent):
        async def telemetry(self) -> None:
            return  # published for every node at once by the loop below, from templates

    job_s = args.job_s

    async def job(agent: FakeAgent, run) -> tuple:
        await agent.log(run, "stdout", "step 1/1")
        await asyncio.sleep(job_s)
        return JobState.SUCCEEDED, 0, {"ok": True}

    nc = await nats.connect(args.nats.split(","), pending_size=256 * 1024 * 1024, max_reconnect_attempts=-1)
    js = nc.jetstream(publish_async_max_pending=20000)
    await ensure_telemetry_stream(js)
    await ensure_jobs_stream(js)
    stamp = iso(TEMPLATE_TIME).encode()
    agents: dict[str, FleetAgent] = {}
    templates: dict[str, bytes] = {}
    active: list[str] = []
    stats = {"published": 0, "ack_failures": 0, "late_ms_max": 0.0, "ticks_skipped": 0}
    retiring: set[asyncio.Task] = set()
    acks: list = []

    async def set_nodes(n: int) -> None:
        nonlocal active
        names = [node_name(i) for i in range(n)]
        new = [x for x in names if x not in agents]
        for x in new:
            templates[x] = template(x)
        for i in range(0, len(new), 100):  # each start makes a few JetStream API calls: not all at once
            chunk = [FleetAgent(nc, x, gpus=GPUS_PER_NODE, behaviour=job, heartbeat_s=args.heartbeat_s,
                                telemetry_s=1.0, js_publish=False) for x in new[i:i + 100]]
            await asyncio.gather(*(a.start() for a in chunk))
            agents.update({a.node: a for a in chunk})
        for x in active[n:]:
            t = asyncio.create_task(retire(agents.pop(x)))
            retiring.add(t)
            t.add_done_callback(retiring.discard)
        active = names

    async def retire(agent: FleetAgent) -> None:
        await agent.retire()  # GPUs out of placement at once; running jobs finish
        await asyncio.sleep(job_s + 1)
        await agent.stop()

    async def publish_loop() -> None:
        k = 0
        t0 = math.ceil(time.time())
        while True:
            tick = t0 + k
            # Yield at least once a tick, also with no node to publish for.
            await asyncio.sleep(max(0.0, tick - time.time()))
            names = list(active)
            n = len(names)
            for j, x in enumerate(names):
                due = tick + j / max(1, n)
                ahead = due - time.time()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
                else:
                    stats["late_ms_max"] = max(stats["late_ms_max"], -ahead * 1000.0)
                when = datetime.fromtimestamp(due, UTC)
                data = templates[x].replace(stamp, iso(when).encode()).replace(b'"seq":0,', f'"seq":{k},'.encode(), 1)
                acks.append(await js.publish_async(subjects.telemetry(x), data,
                                                   headers={"Nats-Msg-Id": f"{x}:{int(due * 1000)}"}))
                stats["published"] += 1
            k += 1
            # A generator more than a tick behind skips ahead rather than bunch up (as the agent does).
            behind = int(time.time() - (t0 + k))
            if behind > 0:
                k += behind
                stats["ticks_skipped"] += behind

    async def collect_acks() -> None:
        while True:
            await asyncio.sleep(1.0)
            done, keep = [a for a in acks if a.done()], [a for a in acks if not a.done()]
            acks[:] = keep
            stats["ack_failures"] += sum(1 for a in done if a.cancelled() or a.exception() is not None)

    tasks = [asyncio.create_task(publish_loop()), asyncio.create_task(collect_acks())]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            break  # EOF: the benchmark is gone
        cmd, _, arg = line.partition(" ")
        if cmd == "nodes":
            await set_nodes(int(arg))
            answer = {"nodes": len(active)}
        else:
            answer = dict(stats)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for t in tasks:
        t.cancel()
    for a in agents.values():
        await a.stop()
    await nc.close()


# --- measuring -----------------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return math.nan


SAMPLES_SIZE = {
    # Bytes of gpu_samples with its indexes: the hypertable and its chunks, or the partitions and their indexes.
    "timescaledb": "SELECT hypertable_size('gpu_samples')",
    "postgresql": "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('gpu_samples')",
}


def simulated_hour(node: str, start: datetime, gpus: int = GPUS_PER_NODE) -> list[tuple]:
    """One hour of 1 Hz gpu_samples rows of a simulated node (agent/sim.py physics, noise on), its GPUs loaded by
    jobs that change every five minutes: values that vary as real ones do, for a fair compression ratio."""
    from datetime import timedelta

    from agent.sim import SimSource
    from orchestrator.ingest import sample_row
    from services.gpu_physics import workload_for

    rng = random.Random(5)
    src = SimSource(node, count=gpus, seed=5)
    rows: list[tuple] = []
    for s in range(3600):
        if s % 300 == 0:
            for i in range(gpus):
                src.detach_job(f"j{i}")
                if rng.random() < 0.7:
                    kind = rng.choice(["training", "inference", "batch", "interactive"])
                    src.attach_job(f"j{i}", [i], workload_for(kind, rng.choice([8000, 20000, 60000])),
                                   pid=rng.randint(1000, 60000))
        rows.extend(sample_row(x) for x in src.step(1.0, start + timedelta(seconds=s)))
    return rows


async def compressed_hour(conn) -> dict:
    """Store a simulated hour (one full 1-hour chunk, as production chunks are) two days back, compress that chunk
    with the table's own settings, and return its bytes per row before and after (table, indexes, TOAST)."""
    from datetime import timedelta

    from orchestrator.ingest import COLUMNS

    now = datetime.now(UTC)
    start = (now - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    rows = await asyncio.to_thread(simulated_hour, "scale-sim", start)
    t0 = time.monotonic()
    await conn.copy_records_to_table("gpu_samples", records=rows, columns=COLUMNS)
    chunks = await conn.fetch("SELECT c::text AS c FROM show_chunks('gpu_samples', newer_than => $1::timestamptz, "
                              "older_than => $2::timestamptz) c", start, start + timedelta(hours=1))
    if len(chunks) != 1:
        return {"compression_note": f"expected one chunk for the simulated hour, found {len(chunks)}"}
    await conn.execute("SELECT compress_chunk($1::regclass)", chunks[0]["c"], timeout=120)
    st = await conn.fetchrow(
        "SELECT before_compression_total_bytes AS b, after_compression_total_bytes AS a "
        "FROM chunk_compression_stats('gpu_samples') WHERE format('%I.%I', chunk_schema, chunk_name) = $1",
        chunks[0]["c"])
    return {"sim_hour_rows": len(rows), "sim_hour_raw_bytes_per_row": st["b"] / len(rows),
            "compressed_bytes_per_row": st["a"] / len(rows), "compression_ratio": st["b"] / st["a"],
            "compress_s": round(time.monotonic() - t0, 1)}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.time_limit
        self.tmp = Path(tempfile.mkdtemp(prefix="aether-bench-scale-"))
        self.procs: dict[str, list[int]] = {}  # what CPU is reported for: name -> its processes
        self.levels: list[dict] = []
        self.jobs: list[tuple[str, float, float, int]] = []  # id, t0, http ms, level index
        self.submit_errors: dict[str, int] = {}
        self.level_index = -1
        self.fleet = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # --- processes ---------------------------------------------------------------------------------------
    def start_orchestrator(self, nats_url: str, dsn: str, ai_url: str) -> subprocess.Popen:
        import httpx

        from services.localstack import free_port, wait_for

        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NATS_URL": nats_url, "DATABASE_URL": dsn,
               "AI_CORE_URL": ai_url, "ORCHESTRATOR_PORT": str(port), "AETHER_API_TOKEN": TOKEN,
               "ORCHESTRATOR_INSTANCE_ID": "bench", "LOG_LEVEL": self.args.log_level,
               "JOB_MAX_QUEUE": "100000", "STREAM_REPLICAS": str(self.args.nats_replicas)}
        proc = subprocess.Popen([sys.executable, __file__, "--serve-orchestrator"], cwd=ROOT, env=env,
                                stdout=open(self.tmp / "orchestrator.log", "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.orch_url = f"http://127.0.0.1:{port}"

        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"orchestrator exited {proc.returncode}: see {self.tmp / 'orchestrator.log'}")
            return httpx.get(f"{self.orch_url}/v1/health", timeout=5).json()["database"]["ok"]

        wait_for(ready, 90, "the orchestrator with its database ready", interval=0.25)
        return proc

    def start_ai_core(self):
        from ai_core.registry import Registry
        from ai_core.settings import AiCoreSettings
        from services.localstack import free_port
        from tests.support.procs import Service

        root = self.args.model_dir or AiCoreSettings().model_dir
        trained = False
        if not Registry(root).active():
            from ai_core.dataset import synthetic
            from ai_core.model import fit

            print("no placement model in the registry: training a small one for the benchmark", file=sys.stderr)
            ds = synthetic(3000, seed=11, max_jobs_per_episode=500)
            booster, metrics = fit(ds.x, ds.y, ds.groups, seed=11)
            root = self.tmp / "models"
            Registry(root).save(booster, {"source": "synthetic", "rows": len(ds), "metrics": metrics})
            trained = True
        port = free_port()
        svc = Service("ai_core", env={"AI_CORE_PORT": str(port), "AI_CORE_MODEL_DIR": str(root),
                                      "AI_CORE_NATS_ENABLED": "false", "AI_CORE_PREDICT_THREADS": "1",
                                      "LOG_LEVEL": "WARNING"}, port=port, log_path=self.tmp / "ai_core.log")
        svc.start(timeout=90)
        self.model = {"dir": str(root), "trained_for_bench": trained}
        return svc

    async def fleet_cmd(self, line: str, limit_s: float = 120) -> dict:
        self.fleet.stdin.write((line + "\n").encode())
        await self.fleet.stdin.drain()
        raw = await asyncio.wait_for(self.fleet.stdout.readline(), limit_s)
        if not raw:
            raise RuntimeError(f"the fleet process ended: see {self.tmp / 'fleet.log'}")
        return json.loads(raw)

    # --- the job stream ----------------------------------------------------------------------------------
    async def submitter(self, http) -> None:
        """Jobs at --jobs-per-s (Poisson arrivals), a mix of sizes and types, each `--job-s` long on its node."""
        rng = random.Random(7)
        types = ["training", "inference", "batch", "interactive"]
        inflight: set[asyncio.Task] = set()
        i = 0

        async def one(body: dict, level: int) -> None:
            t0 = time.time()
            try:
                r = await http.post(f"{self.orch_url}/v1/jobs", json=body, timeout=30)
            except Exception as exc:
                self.submit_errors[exc.__class__.__name__] = self.submit_errors.get(exc.__class__.__name__, 0) + 1
                return
            if r.status_code == 201:
                self.jobs.append((r.json()["job_id"], t0, (time.time() - t0) * 1000.0, level))
            else:
                code = r.json().get("code", str(r.status_code))
                self.submit_errors[code] = self.submit_errors.get(code, 0) + 1

        while True:
            await asyncio.sleep(rng.expovariate(self.args.jobs_per_s))
            if len(inflight) >= 64:
                self.submit_errors["client_backlog"] = self.submit_errors.get("client_backlog", 0) + 1
                continue
            gpus = rng.choices([1, 2, 4], weights=[70, 20, 10])[0]
            body = {"name": f"scale-{i}", "command": ["true"], "gpus": gpus, "job_type": rng.choice(types),
                    "gpu_mem_mb": rng.choice([2048, 8192, 16384, 40000]), "max_duration_s": 600,
                    "expected_util_pct": rng.choice([25.0, 60.0, 90.0])}
            i += 1
            t = asyncio.create_task(one(body, self.level_index))
            inflight.add(t)
            t.add_done_callback(inflight.discard)

    # --- one level -----------------------------------------------------------------------------------------
    async def set_nodes(self, http, nodes: int) -> None:
        """The fleet runs `nodes` nodes and the orchestrator sees at least that many heartbeating."""
        await self.fleet_cmd(f"nodes {nodes}", limit_s=max(30.0, self.left()))

        async def healthy() -> float:
            text = (await http.get(f"{self.orch_url}/metrics", timeout=10)).text
            return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith("aether_nodes_healthy ")), 0)

        limit = time.monotonic() + 120
        while await healthy() < nodes:
            if time.monotonic() > limit:
                raise TimeoutError(f"the orchestrator did not see {nodes} nodes within 120 s")
            await asyncio.sleep(1.0)

    async def level(self, http, js, pool, gpus: int, seconds: float, label: str) -> dict:
        nodes = max(1, round(gpus / GPUS_PER_NODE))
        gpus = nodes * GPUS_PER_NODE
        t_setup = time.monotonic()
        await self.set_nodes(http, nodes)
        await asyncio.sleep(self.args.settle)  # first heartbeats and inventories, backlog of the change
        # A level that was not sustained leaves a backlog: let ingest drain it (bounded) before the next window, so
        # that window measures its own load, not the previous one's.
        drain_limit = time.monotonic() + min(180.0, max(0.0, self.left() - self.step_cost()))
        while time.monotonic() < drain_limit:
            info = await js.consumer_info("AETHER_TELEMETRY", INGEST_CONSUMER)
            if (info.num_pending or 0) + (info.num_ack_pending or 0) < nodes:
                break
            await asyncio.sleep(1.0)
        await http.get(f"{self.orch_url}/bench/probe", timeout=30)  # drop what came before the window
        self.level_index = len(self.levels)
        pids = self.procs
        cpu0 = {k: sum(cpu_s(p, tree=(k == "postgres")) for p in ps) for k, ps in pids.items()}
        stats0 = await self.fleet_cmd("stats")
        size0, rows0 = await self.samples_size(pool)
        t0 = time.monotonic()
        rss: list[float] = []
        lags: list[float] = []
        places: list[float] = []
        stored = 0
        rounds = 0
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(min(5.0, seconds - (time.monotonic() - t0)) if seconds > 0 else 0)
            rounds += 1
            if rounds % 3 == 0:  # a Prometheus scrape every 15 s, as an operator's would (per-GPU gauges included)
                await http.get(f"{self.orch_url}/metrics", timeout=30)
            rss.append(rss_mb(pids["orchestrator"][0]))
            data = (await http.get(f"{self.orch_url}/bench/probe", timeout=30)).json()
            lags += data["lags_ms"]
            places += data["placements_ms"]
            stored += data["samples"]
        wall = time.monotonic() - t0
        cpu = {k: (sum(cpu_s(p, tree=(k == "postgres")) for p in ps) - cpu0[k]) / wall * 100.0
               for k, ps in pids.items()}
        stats1 = await self.fleet_cmd("stats")
        size1, rows1 = await self.samples_size(pool)
        info = await js.consumer_info("AETHER_TELEMETRY", INGEST_CONSUMER)
        backlog = (info.num_pending or 0) + (info.num_ack_pending or 0)
        lag = percentiles(lags)
        place = percentiles(places)
        published = (stats1["published"] - stats0["published"]) * GPUS_PER_NODE
        ok = bool(lags) and lag["p99"] < 1000.0 and backlog < nodes
        row = {
            "label": label, "gpus": gpus, "nodes": nodes, "seconds": round(wall, 1), "ok": ok,
            "lag_p50_ms": lag["p50"], "lag_p95_ms": lag["p95"], "lag_p99_ms": lag["p99"],
            "lag_max_ms": max(lags) if lags else math.nan,
            "placement_p50_ms": place["p50"], "placement_p99_ms": place["p99"], "placements": len(places),
            "samples_published": published, "samples_stored": stored, "backlog_msgs_at_end": backlog,
            "orchestrator_cpu_pct": cpu["orchestrator"], "orchestrator_rss_mb": max(rss) if rss else math.nan,
            "postgres_cpu_pct": cpu["postgres"], "nats_cpu_pct": cpu["nats"], "ai_core_cpu_pct": cpu.get("ai_core"),
            "fleet_cpu_pct": cpu["fleet"], "fleet_ack_failures": stats1["ack_failures"] - stats0["ack_failures"],
            "db_bytes_per_row": (size1 - size0) / (rows1 - rows0) if rows1 > rows0 else math.nan,
            "load_avg_1m": os.getloadavg()[0], "setup_s": round(t0 - t_setup, 1),
        }
        self.levels.append(row)
        print(f"  {label}: {gpus} GPUs  lag p99 {lag['p99']:.0f} ms  backlog {backlog}  orchestrator "
              f"{cpu['orchestrator']:.0f}% CPU  {row['orchestrator_rss_mb']:.0f} MB  -> {'ok' if ok else 'NOT SUSTAINED'}",
              file=sys.stderr, flush=True)
        return row

    async def samples_size(self, pool) -> tuple[int, int]:
        async with pool.acquire() as conn:
            size = await conn.fetchval(SAMPLES_SIZE[self.storage])
            # The planner's estimate would do for sizing, but an exact count is cheap enough at these sizes.
            rows = await conn.fetchval("SELECT count(*) FROM gpu_samples")
        return int(size or 0), int(rows)

    # --- the search ----------------------------------------------------------------------------------------
    def step_cost(self) -> float:
        return self.args.step_duration + self.args.settle + 30

    async def search(self, http, js, pool, main_ok: bool) -> tuple[int, bool]:
        """Largest sustained GPU count (0 if none), and whether the search stopped at --max-gpus / the time limit."""
        args = self.args
        lo, hi = (1000, None) if main_ok else (None, 1000)
        g = 2000 if main_ok else 500
        while (hi is None if main_ok else lo is None) and self.left() > self.step_cost():
            if main_ok and g > args.max_gpus:
                return lo, True
            if not main_ok and g < GPUS_PER_NODE:
                return 0, False
            row = await self.level(http, js, pool, g, args.step_duration, "search")
            if row["ok"]:
                lo = row["gpus"]
                g *= 2
            else:
                hi = row["gpus"]
                g //= 2
            if not main_ok and lo is not None:
                break
        if lo is None or hi is None:
            return lo or 0, True
        while hi - lo > max(args.resolution, 0.1 * lo) and self.left() > self.step_cost():
            mid = round((lo + hi) / 2 / GPUS_PER_NODE) * GPUS_PER_NODE
            row = await self.level(http, js, pool, mid, args.step_duration, "search")
            if row["ok"]:
                lo = row["gpus"]
            else:
                hi = row["gpus"]
        return lo, hi - lo > max(args.resolution, 0.1 * lo)

    # --- storage after the run -----------------------------------------------------------------------------
    async def storage_costs(self, pool, js) -> dict:
        """Drain ingest; bytes per stored row of everything; then (TimescaleDB) one simulated hour compressed with
        the production settings, and the 1-minute rollup materialised."""
        limit = time.monotonic() + 60
        while time.monotonic() < limit:
            info = await js.consumer_info("AETHER_TELEMETRY", INGEST_CONSUMER)
            if not info.num_pending and not info.num_ack_pending:
                break
            await asyncio.sleep(0.5)
        out: dict = {}
        async with pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM gpu_samples")
            size = await conn.fetchval(SAMPLES_SIZE[self.storage])
            out["rows_total"] = rows
            out["raw_bytes_per_row"] = size / rows if rows else math.nan
            if self.storage != "timescaledb" or self.args.no_compress or self.left() < 60:
                return out
            out.update(await compressed_hour(conn))
            t0 = time.monotonic()
            await conn.execute("CALL refresh_continuous_aggregate('gpu_samples_1m', NULL, NULL)",
                               timeout=max(30.0, self.left() - 30))
            out["rollup_refresh_s"] = round(time.monotonic() - t0, 1)
            mat = await conn.fetchrow(
                "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) AS t "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = 'gpu_samples_1m'")
            if mat is not None:
                n = await conn.fetchval(f"SELECT count(*) FROM {mat['t']}")
                rsize = await conn.fetchval("SELECT hypertable_size($1::regclass)", mat["t"])
                out["rollup_rows"] = n
                out["rollup_bytes_per_row"] = rsize / n if n else math.nan
        return out

    # --- the whole run -------------------------------------------------------------------------------------
    async def run(self) -> dict:
        import asyncpg
        import httpx
        import nats

        from services.localstack import NatsCluster, NatsServer, Postgres

        args = self.args
        pg = await asyncio.to_thread(Postgres(durable=True).start)
        ns = await asyncio.to_thread((NatsCluster() if args.nats_replicas > 1 else NatsServer()).start)
        ai = orch = None
        fleet_log = self.tmp / "fleet.log"
        fleet_log.touch()
        print(f"logs in {self.tmp}", file=sys.stderr, flush=True)
        try:
            dsn = pg.create_database("bench_scale")
            ai_url = "http://127.0.0.1:9"
            if not args.no_ai_core:
                ai = await asyncio.to_thread(self.start_ai_core)
                ai_url = ai.url
            orch = await asyncio.to_thread(self.start_orchestrator, ns.url, dsn, ai_url)
            self.storage = "timescaledb" if pg.timescale else "postgresql"
            self.fleet = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--fleet", "--nats", ns.url, "--job-s", str(args.job_s), "--heartbeat-s",
                str(args.heartbeat_s), cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=fleet_log.open("ab"))
            nats_pids = [ns.proc.pid] if isinstance(ns, NatsServer) else [x.proc.pid for x in ns.servers]
            self.procs = {"orchestrator": [orch.pid], "postgres": [pg.proc.pid], "nats": nats_pids,
                          "fleet": [self.fleet.pid]}
            if ai is not None:
                self.procs["ai_core"] = [ai.proc.pid]
            nc = await nats.connect(ns.url.split(","))
            js = nc.jetstream()
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                submitting = None
                try:
                    print(f"ready after {time.monotonic() - self.started:.0f}s; measuring", file=sys.stderr,
                          flush=True)
                    await self.set_nodes(http, 13)  # jobs start arriving once there are GPUs to take them
                    submitting = asyncio.create_task(self.submitter(http))
                    await self.level(http, js, pool, 104, args.step_duration, "small")
                    main = await self.level(http, js, pool, 1000, args.duration, "main")
                    best, capped = await self.search(http, js, pool, main["ok"])
                finally:
                    if submitting is not None:
                        submitting.cancel()
                self.fleet.stdin.close()
                await asyncio.wait_for(self.fleet.wait(), 30)
                storage = await self.storage_costs(pool, js)
                jobs = await self.job_figures(pool)
            await pool.close()
            await nc.close()
        finally:
            if self.fleet is not None and self.fleet.returncode is None:
                self.fleet.kill()
            if orch is not None:
                orch.send_signal(signal.SIGTERM)
                try:
                    orch.wait(20)
                except subprocess.TimeoutExpired:
                    orch.kill()
            if ai is not None:
                ai.stop()
            ns.cleanup()
            pg.cleanup()
        return self.result(main, best, capped, storage, jobs)

    async def job_figures(self, pool) -> dict:
        """Submit -> SCHEDULED and submit -> RUNNING of the main phase's jobs, from job_events (same host clock)."""
        main_level = next(i for i, r in enumerate(self.levels) if r["label"] == "main")
        mine = {j[0]: j[1] for j in self.jobs if j[3] == main_level}
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT job_id, to_state, min(recorded_at) AS t FROM job_events "
                                    "WHERE job_id = ANY($1::text[]) GROUP BY job_id, to_state", list(mine))
            states = dict(await conn.fetch("SELECT state, count(*) FROM jobs GROUP BY state"))
            ai_ms = [r["latency_ms"] for r in await conn.fetch(
                "SELECT latency_ms FROM placements WHERE job_id = ANY($1::text[]) AND policy = 'xgboost' "
                "AND latency_ms IS NOT NULL", list(mine))]
            policies = {f"{r['policy']} {r['why']}".strip(): r["n"] for r in await conn.fetch(
                "SELECT policy, coalesce(split_part(fallback_reason, ' ', 1), '') AS why, count(*) AS n "
                "FROM placements WHERE job_id = ANY($1::text[]) GROUP BY 1, 2", list(mine))}
        sched, running = [], []
        for r in rows:
            ms = (r["t"].timestamp() - mine[r["job_id"]]) * 1000.0
            if r["to_state"] == "SCHEDULED":
                sched.append(ms)
            elif r["to_state"] == "RUNNING":
                running.append(ms)
        http_ms = [j[2] for j in self.jobs if j[3] == main_level]
        return {"submitted": len(mine), "to_scheduled": percentiles(sched), "to_running": percentiles(running),
                "http": percentiles(http_ms), "states_at_end": states, "submit_errors": self.submit_errors,
                "placement_policies": policies, "ai_core_decision_ms": percentiles(ai_ms)}

    def result(self, main: dict, best: int, capped: bool, storage: dict, jobs: dict) -> dict:
        args = self.args
        per_day = 86400  # rows per GPU-day at 1 Hz
        small = next(r for r in self.levels if r["label"] == "small")
        top = max((r for r in self.levels if r["ok"]), key=lambda r: r["gpus"], default=None)
        growth = []
        for r in [small, main] + ([top] if top is not None and top is not main else []):
            growth.append({"gpus": r["gpus"], "lag_p99_ms": r["lag_p99_ms"],
                           "orchestrator_cpu_pct": r["orchestrator_cpu_pct"],
                           "orchestrator_cpu_pct_per_1000_gpus": r["orchestrator_cpu_pct"] / r["gpus"] * 1000,
                           "orchestrator_rss_mb": r["orchestrator_rss_mb"], "postgres_cpu_pct": r["postgres_cpu_pct"],
                           "nats_cpu_pct": r["nats_cpu_pct"], "fleet_cpu_pct": r["fleet_cpu_pct"]})
        return {
            "gpus": main["gpus"],
            "ingest_lag_p99_ms": main["lag_p99_ms"],
            "placement_p99_ms": main["placement_p99_ms"],
            "orchestrator_cpu_pct": main["orchestrator_cpu_pct"],
            "orchestrator_rss_mb": main["orchestrator_rss_mb"],
            "db_bytes_per_gpu_day": main["db_bytes_per_row"] * per_day,
            "max_gpus_1hz": best,
            "max_gpus_search_capped": capped,
            "duration_s": main["seconds"],
            "ingest_lag_p50_ms": main["lag_p50_ms"], "ingest_lag_p95_ms": main["lag_p95_ms"],
            "ingest_lag_max_ms": main["lag_max_ms"],
            "placement_p50_ms": main["placement_p50_ms"], "placements": main["placements"],
            "samples_published": main["samples_published"], "samples_stored": main["samples_stored"],
            "postgres_cpu_pct": main["postgres_cpu_pct"], "nats_cpu_pct": main["nats_cpu_pct"],
            "ai_core_cpu_pct": main["ai_core_cpu_pct"], "fleet_cpu_pct": main["fleet_cpu_pct"],
            "db_bytes_per_gpu_day_all_data": storage.get("raw_bytes_per_row", math.nan) * per_day,
            "db_bytes_per_gpu_day_compressed": storage.get("compressed_bytes_per_row", math.nan) * per_day,
            "db_bytes_per_gpu_day_simulated_uncompressed": storage.get("sim_hour_raw_bytes_per_row", math.nan) * per_day,
            "compression_ratio": storage.get("compression_ratio"),
            "rollup_bytes_per_gpu_day": storage.get("rollup_bytes_per_row", math.nan) * 1440,
            "storage": {**storage, "flavour": self.storage},
            "jobs": {**jobs, "per_s": args.jobs_per_s, "run_s": args.job_s},
            "cost_growth": growth,
            "levels": self.levels,
            "agents": "protocol-level fake agents (tests/jobs/fake_agent.py) in one separate process; telemetry "
                      "from serialised templates, 8 GPUs per node, 1 Hz, heartbeats every "
                      f"{args.heartbeat_s:g} s",
            "placement": f"AI core ({'model trained for the run' if self.model['trained_for_bench'] else 'registry model'})"
                         if not args.no_ai_core else "heuristic fallback (no AI core)",
            "model": getattr(self, "model", None),
            "nats_replicas": args.nats_replicas, "postgres_fsync": True, "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0], "wall_s": round(time.monotonic() - self.started, 1),
            "criterion": "p99 ingest lag < 1 s and stream backlog < 1 s of messages at the end of the window",
        }


def report(res: dict, out: Path) -> None:
    rows = [{"GPUs": r["gpus"], "phase": r["label"], "s": r["seconds"], "lag p50": r["lag_p50_ms"],
             "lag p95": r["lag_p95_ms"], "lag p99": r["lag_p99_ms"], "place p99": r["placement_p99_ms"],
             "orch CPU%": r["orchestrator_cpu_pct"], "orch MB": r["orchestrator_rss_mb"],
             "PG CPU%": r["postgres_cpu_pct"], "NATS CPU%": r["nats_cpu_pct"], "fleet CPU%": r["fleet_cpu_pct"],
             "backlog": r["backlog_msgs_at_end"], "ok": r["ok"]} for r in res["levels"]]
    print_table(rows, title="levels (latencies in ms; CPU in % of one core)")
    keys = ["gpus", "ingest_lag_p99_ms", "placement_p99_ms", "orchestrator_cpu_pct", "orchestrator_rss_mb",
            "db_bytes_per_gpu_day", "max_gpus_1hz", "db_bytes_per_gpu_day_compressed", "rollup_bytes_per_gpu_day"]
    print_table([{"measure": k, "value": res[k]} for k in keys], title=f"scale benchmark ({res['wall_s']:.0f}s)")
    write_json(out, res)
    levels = res["levels"]
    cats = [f"{r['gpus']:,}" + ("" if r["ok"] else " (x)") for r in levels]
    svg_bar_chart(out.with_suffix(".svg"), "CPU by GPU count at 1 Hz (% of one core; x = not sustained)", cats,
                  {"orchestrator": [r["orchestrator_cpu_pct"] for r in levels],
                   "PostgreSQL": [r["postgres_cpu_pct"] for r in levels],
                   "NATS": [r["nats_cpu_pct"] for r in levels],
                   "load generator": [r["fleet_cpu_pct"] for r in levels]}, unit="%")
    svg_bar_chart(out.with_name(out.stem + ".lag.svg"), "Ingest lag by GPU count at 1 Hz (ms)", cats,
                  {"p50": [r["lag_p50_ms"] for r in levels], "p99": [r["lag_p99_ms"] for r in levels]}, unit=" ms")
    print(f"wrote {out}, {out.with_suffix('.svg')}, {out.with_name(out.stem + '.lag.svg')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="JSON result file (an SVG chart is written next to it)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds at 1,000 GPUs (the headline figures)")
    p.add_argument("--step-duration", type=float, default=30.0, help="seconds per level of the search (and ~100)")
    p.add_argument("--settle", type=float, default=8.0, help="seconds after a change before a window opens")
    p.add_argument("--max-gpus", type=int, default=32000, help="the search stops there")
    p.add_argument("--resolution", type=int, default=500, help="bisect until the gap is this (or 10 %%) small")
    p.add_argument("--time-limit", type=float, default=0, help="whole run; default: duration + 15 min")
    p.add_argument("--jobs-per-s", type=float, default=5.0, help="job arrival rate (Poisson)")
    p.add_argument("--job-s", type=float, default=10.0, help="how long each job runs on its node")
    p.add_argument("--heartbeat-s", type=float, default=5.0, help="node heartbeat period (the agent's default)")
    p.add_argument("--nats-replicas", type=int, choices=[1, 3], default=1, help="3: a 3-server cluster, R3 streams")
    p.add_argument("--no-ai-core", action="store_true", help="place with the heuristic fallback only")
    p.add_argument("--model-dir", type=Path, help="AI core model registry (default: the configured one)")
    p.add_argument("--no-compress", action="store_true", help="skip the compression measurement")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--serve-orchestrator", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fleet", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nats", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_orchestrator:
        serve_orchestrator()
        return 0
    if args.fleet:
        asyncio.run(fleet(args))
        return 0
    if not args.out:
        p.error("--out is required")
    if not args.time_limit:
        args.time_limit = args.duration + 15 * 60
    res = asyncio.run(Bench(args).run())
    report(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
