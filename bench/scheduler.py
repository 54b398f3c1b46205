"""Scheduler benchmark: short jobs submitted over HTTP to a real orchestrator, placed on 100 simulated nodes x 8 GPUs,
with real NATS and PostgreSQL (fsync on); reports submissions/s, placements/s and submit -> RUNNING latency.

The nodes are protocol-level fake agents (tests/jobs/fake_agent.py: heartbeats, telemetry, run/cancel request-reply,
RUNNING/SUCCEEDED reports and a log line, all on the real subjects and so into the real JetStream streams, published
without waiting for JetStream acks), all hosted by ONE separate process (`--fleet`), so their CPU is not the
benchmark client's. A job "runs" for --run-ms. Submissions go over keep-alive HTTP/1.1 connections with a lean
client (`LeanConnection`: the same requests as the project's client, a fraction of its CPU, so the load generator
does not set the pace on a small host). Submit -> RUNNING is measured from just before
the client sends POST /v1/jobs to the moment the orchestrator committed the job's RUNNING transition
(`job_events.recorded_at`), on the same host clock. Placement uses the orchestrator's configured path: without an AI
core at --ai-core-url (the default) that is the documented heuristic fallback, with the circuit breaker open.

Three phases:
1. --paced-jobs submissions at --paced-rate per second (open loop, far below capacity: the pipeline's own latency;
   keys `paced_*`).
2. The issue's keys: --jobs submissions arriving at --rate per second (default 520: above the 500/s the issue asks
   for), open loop - each sent on time whatever the answers, as independent users submit - so submit -> RUNNING is
   the latency at that throughput, with GPUs free.
3. Capacity (keys `capacity_*`): --capacity-jobs submissions from --concurrency clients that each submit again as
   soon as they are answered (closed loop). They drive the orchestrator to its limit, so this phase measures the
   most it places per second; its latency includes waiting for a saturated server (by Little's law, clients /
   throughput per POST), which is why it is not the issue's latency figure. `--rate 0` makes phase 2 this closed
   loop instead (and skips phase 3).
Where phase 2's time goes: submit -> SCHEDULED (admission, placement and their commit), SCHEDULED -> the agent's
RUNNING report (dispatch and the agent starting the job, by the agent's clock on the same host), and that report ->
its commit (JetStream, the reports consumer, its write): keys `submit_to_scheduled_*`, `scheduled_to_agent_running_*`
and `agent_running_to_recorded_*`.
The orchestrator's CPU per job in phase 2 (net of what 100 idle nodes cost it: heartbeats, telemetry ingest,
alerts) is reported, since every process of the benchmark shares the host.

    python bench/scheduler.py --out results/scheduler.json [--jobs 5000] [--nodes 100] [--gpus 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
from common import ROOT, cpu_s, percentiles, print_table, write_json


def _run(coro):
    """asyncio.run on uvloop when installed (it comes with uvicorn[standard], as the orchestrator runs on it): the
    simulated fleet and the load generator share the host with the orchestrator, and should cost it little."""
    try:
        if os.environ.get("NO_UVLOOP"):
            raise ImportError
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


HARD_LIMIT_S = 170.0  # the whole run, start-up included, stays under 3 minutes
SUBMIT_LIMIT_S = 145.0  # no submission after this (from the start): a slow host submits fewer, and says so
IDLE_WINDOW_S = 3.0


# --- the fleet process ------------------------------------------------------------------------------------
async def fleet(args: argparse.Namespace) -> None:
    import nats

    from services.schemas import JobState
    from tests.jobs.fake_agent import FakeAgent

    run_s = args.run_ms / 1000.0

    async def short(agent, run):
        await agent.log(run, "stdout", "step 1/1 done")
        await asyncio.sleep(run_s)
        return JobState.SUCCEEDED, 0, {"ok": True}

    nc = await nats.connect(args.nats, pending_size=256 * 1024 * 1024)
    agents = [FakeAgent(nc, f"bench{n:03d}", gpus=args.gpus, behaviour=short, heartbeat_s=2.0, telemetry_s=1.0,
                        js_publish=False) for n in range(args.nodes)]
    for a in agents:
        await a.start()
    await asyncio.to_thread(Path(args.ready_file).write_text, "ready")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=HARD_LIMIT_S)
    except TimeoutError:
        pass
    for a in agents:
        await a.stop()
    await nc.close()


# --- the benchmark --------------------------------------------------------------------------------------
class SubmitError(Exception):
    pass


class LeanConnection:
    """One keep-alive HTTP/1.1 connection that POSTs job specs: the load generator of the benchmark.

    The project's client (httpx underneath) costs about 5 ms of CPU per request here, so on a small host it, not
    the orchestrator, set the pace (measured: 139 requests/s against a server that does nothing). These are the
    same requests on the wire (JSON body, bearer token, Idempotency-Key, resent with the same key when a connection
    drops), at a fraction of the cost."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = (f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def submit(self, body: bytes, key: str, retries: int = 3) -> dict:
        import orjson

        req = self.head + f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        for attempt in range(retries):
            try:
                if self.writer is None:
                    await self._open()
                self.writer.write(req)
                head = await self.reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split(b" ", 2)[1])
                length, close = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                data = await self.reader.readexactly(length) if length else b""
                if close:
                    self.close()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                self.close()  # a dropped connection: resend with the same key (the server dedupes)
                if attempt + 1 == retries:
                    raise
                continue
            if status >= 400:
                raise SubmitError(f"HTTP {status}: {data[:300]!r}")
            return orjson.loads(data)
        raise AssertionError("unreachable")


def _endpoint(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or 80


def _body(name: str) -> bytes:
    import orjson

    return orjson.dumps({"name": name, "command": ["true"], "gpu_mem_mb": 1024, "max_duration_s": 60,
                         "job_type": "inference"})


async def submit_all(url: str | list[str], token: str, n: int, concurrency: int, run_id: str,
                     deadline: float = float("inf")) -> list[tuple[str, float, float]]:
    """Submit over `concurrency` keep-alive connections at once (closed loop); no new submission after `deadline`
    (monotonic), so the benchmark stays bounded on a slow host. Several URLs: the connections spread over them."""
    import uuid

    endpoints = [_endpoint(u) for u in ([url] if isinstance(url, str) else url)]
    out: list[tuple[str, float, float]] = []
    counter = iter(range(n))

    async def worker(w: int) -> None:
        conn = LeanConnection(*endpoints[w % len(endpoints)], token)
        try:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                body, key = _body(f"{run_id}-{i}"), uuid.uuid4().hex
                t0 = time.time()
                answer = await conn.submit(body, key)
                out.append((answer["job_id"], t0, time.time()))
        finally:
            conn.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return out


async def submit_paced(url: str | list[str], token: str, n: int, rate: float, run_id: str
                       ) -> list[tuple[str, float, float]]:
    """Open loop: one submission every 1/rate s whatever the answers (latency with the system not saturated).
    Connections are reused when free, opened when all are busy. Several URLs (replicas): taken in turn, as a
    round-robin load balancer would."""
    import uuid

    endpoints = [_endpoint(u) for u in ([url] if isinstance(url, str) else url)]
    out: list[tuple[str, float, float]] = []
    idle: list[list[LeanConnection]] = [[] for _ in endpoints]

    async def one(i: int) -> None:
        k = i % len(endpoints)
        conn = idle[k].pop() if idle[k] else LeanConnection(*endpoints[k], token)
        body, key = _body(f"{run_id}-{i}"), uuid.uuid4().hex
        t0 = time.time()
        answer = await conn.submit(body, key)
        out.append((answer["job_id"], t0, time.time()))
        idle[k].append(conn)

    tasks = []
    start = time.monotonic()
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    for conns in idle:
        for conn in conns:
            conn.close()
    return out


def _phase(subs: list[tuple[str, float, float]], times: dict[str, dict[str, float]]) -> dict[str, float]:
    """Throughput and latency of one phase's submissions: (job id, sent, answered) and their jobs' event times."""
    ids = [s[0] for s in subs]
    submitted = {s[0]: s[1] for s in subs}
    to_running = [(times[j]["RUNNING"] - submitted[j]) * 1000 for j in ids if "RUNNING" in times.get(j, {})]
    sched = sorted(times[j]["SCHEDULED"] for j in ids if "SCHEDULED" in times.get(j, {}))
    lat = percentiles(to_running)
    http = percentiles([(s[2] - s[1]) * 1000 for s in subs])
    # Where the time goes: admitted and placed, then dispatch + the agent's RUNNING report + its commit.
    to_sched = percentiles([(times[j]["SCHEDULED"] - submitted[j]) * 1000 for j in ids
                            if "SCHEDULED" in times.get(j, {})])
    sched_run = percentiles([(times[j]["RUNNING"] - times[j]["SCHEDULED"]) * 1000 for j in ids
                             if "RUNNING" in times.get(j, {}) and "SCHEDULED" in times[j]])
    # ... split at the agent's RUNNING report: dispatch and the agent's start, then the report's way back.
    dispatched = percentiles([(times[j]["agent RUNNING"] - times[j]["SCHEDULED"]) * 1000 for j in ids
                              if "agent RUNNING" in times.get(j, {}) and "SCHEDULED" in times[j]])
    reported = percentiles([(times[j]["RUNNING"] - times[j]["agent RUNNING"]) * 1000 for j in ids
                            if "agent RUNNING" in times.get(j, {})])
    return {
        "submissions_per_s": len(subs) / (max(s[2] for s in subs) - min(s[1] for s in subs)),
        "placements_per_s": (len(sched) - 1) / (sched[-1] - sched[0]) if len(sched) > 1 else float("nan"),
        "submit_to_running_p50_ms": lat["p50"],
        "submit_to_running_p95_ms": lat["p95"],
        "submit_to_running_p99_ms": lat["p99"],
        **{f"submit_to_scheduled_{k}_ms": v for k, v in to_sched.items()},
        **{f"scheduled_to_running_{k}_ms": v for k, v in sched_run.items()},
        **{f"scheduled_to_agent_running_{k}_ms": v for k, v in dispatched.items()},
        **{f"agent_running_to_recorded_{k}_ms": v for k, v in reported.items()},
        "submit_http_p50_ms": http["p50"], "submit_http_p95_ms": http["p95"], "submit_http_p99_ms": http["p99"],
        "reached_running": len(to_running),
    }


def _latency(subs: list[tuple[str, float, float]], times: dict[str, dict[str, float]]) -> dict[str, float]:
    return percentiles([(times[j]["RUNNING"] - t0) * 1000 for j, t0, _ in subs if "RUNNING" in times.get(j, {})])


async def wait_done(dsn: str, ids: list[str], deadline: float) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        while True:
            rows = await conn.fetch("SELECT state, count(*) AS n FROM jobs WHERE id = ANY($1::text[]) GROUP BY state",
                                    ids)
            states = {r["state"]: r["n"] for r in rows}
            finished = sum(v for k, v in states.items() if k in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"))
            if finished >= len(ids) or time.monotonic() > deadline:
                return states
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def event_times(dsn: str, ids: list[str]) -> dict[str, dict[str, float]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        # recorded_at: when the orchestrator wrote the transition; time: when its source says it happened (for
        # RUNNING, the agent's clock, the same host's).
        rows = await conn.fetch("SELECT job_id, to_state, min(recorded_at) AS t, min(time) AS said FROM job_events "
                                "WHERE job_id = ANY($1::text[]) GROUP BY job_id, to_state", ids)
    finally:
        await conn.close()
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["job_id"], {})[r["to_state"]] = r["t"].timestamp()
        if r["to_state"] == "RUNNING":
            out[r["job_id"]]["agent RUNNING"] = r["said"].timestamp()
    return out


def wait_gpus(url: str, token: str, want: int, limit_s: float) -> None:
    import httpx

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            gpus = httpx.get(f"{url}/v1/gpus", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
            if sum(1 for g in gpus if g["healthy"]) >= want:
                return
        except Exception:
            pass
        time.sleep(1.0)  # each answer lists every GPU with its sample: do not make the orchestrator busy
    raise TimeoutError(f"the orchestrator did not see {want} healthy GPUs within {limit_s}s")


def run(args: argparse.Namespace) -> dict:
    from services.localstack import NatsServer, Postgres
    from tests.support.procs import TEST_TOKEN, orchestrator

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="aether-bench-scheduler-"))
    ns = NatsServer().start()
    pg = Postgres(durable=True).start()
    procs: list = []
    try:
        dsn = pg.create_database("bench_scheduler")
        orchs = [orchestrator(ns.url, dsn, ai_core_url=args.ai_core_url, log_path=tmp / f"orchestrator-{r}.log",
                              extra_env={"LOG_LEVEL": args.log_level, "JOB_MAX_QUEUE": str(args.jobs * 2),
                                         "HEARTBEAT_TIMEOUT_S": "20", "SAMPLE_STALE_S": "15",
                                         "ORCHESTRATOR_INSTANCE_ID": f"bench-{r}",
                                         **dict(kv.split("=", 1) for kv in args.orchestrator_env)}).start()
                 for r in range(args.replicas)]
        procs.extend(orchs)
        urls = [o.url for o in orchs]
        ready = tmp / "fleet.ready"
        fleet_proc = subprocess.Popen([sys.executable, __file__, "--fleet", "--nats", ns.url, "--nodes",
                                       str(args.nodes), "--gpus", str(args.gpus), "--run-ms", str(args.run_ms),
                                       "--ready-file", str(ready)], cwd=ROOT,
                                      stdout=open(tmp / "fleet.log", "ab"), stderr=subprocess.STDOUT)
        procs.append(fleet_proc)
        for o in orchs:
            wait_gpus(o.url, TEST_TOKEN, args.nodes * args.gpus, 60)
        # Warm-up (connections, first placements), not measured.
        warm = _run(submit_all(urls, TEST_TOKEN, 20, 4, "warm"))
        asyncio.run(wait_done(dsn, [w[0] for w in warm], time.monotonic() + 30))
        # Paced: latency of the pipeline itself, arrivals below capacity.
        paced = _run(submit_paced(urls, TEST_TOKEN, args.paced_jobs, args.paced_rate, "paced"))
        asyncio.run(wait_done(dsn, [p[0] for p in paced], time.monotonic() + 20))
        paced_times = asyncio.run(event_times(dsn, [p[0] for p in paced]))
        print(f"cluster ready after {time.monotonic() - started:.1f}s; submitting {args.jobs} jobs "
              + (f"at {args.rate:g}/s" if args.rate > 0 else f"from {args.concurrency} concurrent HTTP clients"),
              file=sys.stderr)
        # What the orchestrator burns with 100 nodes and no jobs (heartbeats, telemetry ingest, alerts):
        # subtracted to give the CPU a job costs.
        def orch_cpu() -> float:
            return sum(cpu_s(o.proc.pid) for o in orchs)

        idle0, idle_t0 = orch_cpu(), time.monotonic()
        time.sleep(IDLE_WINDOW_S)
        idle_rate = (orch_cpu() - idle0) / (time.monotonic() - idle_t0)
        run_t0 = time.monotonic()
        cpu0 = {"orchestrator": orch_cpu(), "fleet": cpu_s(fleet_proc.pid)}
        if args.rate > 0:
            subs = _run(submit_paced(urls, TEST_TOKEN, args.jobs, args.rate, "bench"))
        else:
            subs = _run(submit_all(urls, TEST_TOKEN, args.jobs, args.concurrency, "bench",
                                   deadline=started + SUBMIT_LIMIT_S))
        ids = [s[0] for s in subs]
        states = asyncio.run(wait_done(dsn, ids, started + HARD_LIMIT_S - 15))
        cpu = {"orchestrator": orch_cpu() - cpu0["orchestrator"], "fleet": cpu_s(fleet_proc.pid) - cpu0["fleet"]}
        run_s = time.monotonic() - run_t0
        times = asyncio.run(event_times(dsn, ids))
        capacity = None
        if args.rate > 0 and args.capacity_jobs > 0:
            # Capacity: clients that submit again as soon as they are answered push the orchestrator to its limit;
            # latency there includes the wait for a saturated server (64 clients / 700 per s is ~90 ms per POST).
            print(f"capacity: {args.capacity_jobs} jobs from {args.concurrency} concurrent clients", file=sys.stderr)
            cap = _run(submit_all(urls, TEST_TOKEN, args.capacity_jobs, args.concurrency, "capacity",
                                  deadline=started + SUBMIT_LIMIT_S))
            asyncio.run(wait_done(dsn, [c[0] for c in cap], started + HARD_LIMIT_S - 5))
            capacity = _phase(cap, asyncio.run(event_times(dsn, [c[0] for c in cap])))
    finally:
        for p in reversed(procs):
            if isinstance(p, subprocess.Popen):
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            else:
                p.stop()
        ns.cleanup()
        pg.cleanup()
    main = _phase(subs, times)
    return {
        **main,
        "load": f"open loop at {args.rate:g} submissions/s" if args.rate > 0 else
        f"closed loop, {args.concurrency} clients",
        **({f"capacity_{k}": v for k, v in capacity.items()} if capacity else {}),
        "paced_jobs": args.paced_jobs, "paced_rate_per_s": args.paced_rate,
        **{f"paced_submit_to_running_{k}_ms": v for k, v in _latency(paced, paced_times).items()},
        "jobs": args.jobs, "jobs_submitted": len(subs), "truncated_by_time_limit": len(subs) < args.jobs,
        "final_states": states,
        "nodes": args.nodes, "gpus_per_node": args.gpus, "concurrency": args.concurrency, "run_ms": args.run_ms,
        "rate_per_s": args.rate or None, "orchestrator_replicas": args.replicas,
        "placement_policy": "heuristic fallback (no AI core)" if "127.0.0.1:9" in args.ai_core_url else
        f"AI core at {args.ai_core_url}",
        "agents": f"{args.nodes} protocol-level fake agents in one separate process (tests/jobs/fake_agent.py)",
        "orchestrator_cpu_ms_per_job": cpu["orchestrator"] * 1000 / len(subs),
        "orchestrator_idle_cpu_pct": idle_rate * 100,
        "orchestrator_cpu_ms_per_job_net_of_idle": (cpu["orchestrator"] - idle_rate * run_s) * 1000 / len(subs),
        "orchestrator_cpu_pct_during_run": cpu["orchestrator"] / run_s * 100,
        "fleet_cpu_ms_per_job": cpu["fleet"] * 1000 / len(subs),
        "load_average_1m": os.getloadavg()[0],
        "postgres_fsync": True, "cpus": os.cpu_count(), "wall_s": time.monotonic() - started,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON result file")
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=64, help="concurrent HTTP submitters (closed loop)")
    p.add_argument("--orchestrator-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the orchestrator (e.g. JOB_SCHEDULER_BATCH=64); repeatable")
    p.add_argument("--replicas", type=int, default=1,
                   help="orchestrator replicas (one schedules; submissions are spread over all, as a load balancer"
                        " would)")
    p.add_argument("--rate", type=float, default=520.0,
                   help="open-loop submissions/s of the main phase (the issue's keys); 0: closed loop instead")
    p.add_argument("--capacity-jobs", type=int, default=5000,
                   help="jobs of the closed-loop capacity phase after an open-loop main phase (0: none)")
    p.add_argument("--run-ms", type=int, default=500, help="how long each job runs")
    p.add_argument("--paced-jobs", type=int, default=100, help="jobs of the open-loop latency phase")
    p.add_argument("--paced-rate", type=float, default=10.0, help="submissions/s of the open-loop phase")
    p.add_argument("--ai-core-url", default="http://127.0.0.1:9", help="default: nothing there (heuristic)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--fleet", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nats", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fleet:
        _run(fleet(args))
        return 0
    if not args.out:
        p.error("--out is required")
    res = run(args)
    rows = [{"measure": "submit -> RUNNING (ms)", **{k: res[f"submit_to_running_{k}_ms"] for k in ("p50", "p95", "p99")}},
            {"measure": "POST /v1/jobs (ms)", **{k: res[f"submit_http_{k}_ms"] for k in ("p50", "p95", "p99")}},
            {"measure": "submit -> SCHEDULED (ms)", **{k: res[f"submit_to_scheduled_{k}_ms"] for k in ("p50", "p95", "p99")}},
            {"measure": "SCHEDULED -> RUNNING (ms)", **{k: res[f"scheduled_to_running_{k}_ms"] for k in ("p50", "p95", "p99")}},
            {"measure": "  SCHEDULED -> agent says RUNNING (ms)",
             **{k: res[f"scheduled_to_agent_running_{k}_ms"] for k in ("p50", "p95", "p99")}},
            {"measure": "  agent says RUNNING -> recorded (ms)",
             **{k: res[f"agent_running_to_recorded_{k}_ms"] for k in ("p50", "p95", "p99")}},
            {"measure": f"paced {res['paced_rate_per_s']:g}/s: submit -> RUNNING (ms)",
             **{k: res[f"paced_submit_to_running_{k}_ms"] for k in ("p50", "p95", "p99")}}]
    print_table(rows, ["measure", "p50", "p95", "p99"],
                title=f"{res['jobs_submitted']} of {res['jobs']} jobs submitted"
                      f"{' (time limit)' if res['truncated_by_time_limit'] else ''}, "
                      f"{res['nodes']} nodes x {res['gpus_per_node']} GPUs")
    if "capacity_placements_per_s" in res:
        print_table([{"measure": "capacity: submit -> RUNNING (ms)",
                      **{k: res[f"capacity_submit_to_running_{k}_ms"] for k in ("p50", "p95", "p99")},
                      "placements/s": res["capacity_placements_per_s"]}],
                    ["measure", "p50", "p95", "p99", "placements/s"],
                    title=f"capacity: {args.concurrency} clients submitting as fast as they are answered")
    print_table([{"load": res["load"], "submissions/s": res["submissions_per_s"],
                  "placements/s": res["placements_per_s"], "reached RUNNING": res["reached_running"],
                  "orchestrator CPU ms/job (net)": res["orchestrator_cpu_ms_per_job_net_of_idle"],
                  "orchestrator CPU % of a core": res["orchestrator_cpu_pct_during_run"],
                  "load avg": res["load_average_1m"], "wall s": res["wall_s"]}])
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
