"""Dashboard benchmark: 1,000 simulated GPUs at 1 Hz through the real stack (nats-server, PostgreSQL with fsync on,
orchestrator and dashboard processes) into Chromium, plus 99 Python WebSocket clients beside the browser.

Measured: the lag from a sample's time to its value being drawn, inside the page (window.aetherPerf, recorded by
the page when a card on screen shows the new sample); the orchestrator's CPU with the browser alone, then with
100 clients; message and byte rates; whether any client fell behind (dropped by the hub, or its lag growing).

    python bench/dashboard.py --out bench/results/dashboard.json        # about 2 minutes, stops by itself
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentiles, print_table, svg_bar_chart, write_json

CHROMIUM = os.environ.get("AETHER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
VIEWER = "viewer-token-bench-0123456789"
# The first sample time in a "gpus" diff; found without parsing the whole message, so 99 clients stay cheap.
TIME_RE = re.compile(rb'"time":"([^"]+)"')


def parse_iso(raw: bytes) -> float:
    return datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- the 99 clients (run in a child process)

async def _client(url: str, until: float, stats: dict, compression: str | None) -> None:
    from websockets.asyncio.client import connect

    try:
        async with connect(url, max_size=64 << 20, compression=compression, open_timeout=30) as ws:
            while time.time() < until:
                try:
                    data = await asyncio.wait_for(ws.recv(decode=False), timeout=max(0.1, until - time.time()))
                except TimeoutError:
                    break
                now = time.time()
                stats["messages"] += 1
                stats["bytes"] += len(data)
                if data.startswith(b'{"type":"gpus"'):
                    m = TIME_RE.search(data)
                    if m:
                        stats["lags"].append((now - parse_iso(m.group(1))) * 1000)
    except Exception as exc:  # a dropped client is a result, not a crash of the benchmark
        stats["errors"].append(repr(exc)[:200])
        stats["closed_early"] += 1


async def _clients_main(url: str, n: int, seconds: float, compression: str | None) -> list[dict]:
    until = time.time() + seconds
    stats = [{"messages": 0, "bytes": 0, "lags": [], "errors": [], "closed_early": 0} for _ in range(n)]
    # Connect in small waves, as dashboards opening over a few seconds would.
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(_client(url, until, stats[i], compression)))
        if i % 10 == 9:
            await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    return stats


# ---------------------------------------------------------------- the benchmark

def orchestrator_cpu(proc, seconds: float) -> float:
    """Percent of one core the orchestrator process used over the next `seconds`."""
    import psutil

    p = psutil.Process(proc.pid)
    t0 = p.cpu_times()
    w0 = time.monotonic()
    time.sleep(seconds)
    t1 = p.cpu_times()
    return 100.0 * ((t1.user - t0.user) + (t1.system - t0.system)) / (time.monotonic() - w0)


def ingest_lag(orch_url: str) -> tuple[float, float]:
    """(sum, count) of the orchestrator's sample-time -> committed histogram: the ingest part of the lag."""
    import httpx

    text = httpx.get(f"{orch_url}/metrics", timeout=10).text
    return metric(text, "aether_ingest_lag_seconds_sum"), metric(text, "aether_ingest_lag_seconds_count")


def mean_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    return 1000.0 * (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else float("nan")


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def run(args) -> dict:
    import httpx
    from playwright.sync_api import sync_playwright

    from services.localstack import NatsServer, Postgres, free_port, wait_for
    from tests.browser.feeder import Feeder
    from tests.support.procs import Service, orchestrator

    tmp = Path(tempfile.mkdtemp(prefix="aether-bench-dash-"))
    nats_s = NatsServer().start()
    pg = Postgres(durable=True).start()
    cleanup = [nats_s.cleanup, pg.cleanup]
    try:
        db = pg.create_database("bench_dashboard")
        dash_port = free_port()
        env = {"AETHER_VIEWER_TOKEN": VIEWER, "CORS_ORIGINS": f'["http://127.0.0.1:{dash_port}"]', "LOG_LEVEL": "WARNING"}
        if args.push_interval:
            env["WS_PUSH_INTERVAL_S"] = str(args.push_interval)
        orch = orchestrator(nats_s.url, db, log_path=tmp / "orchestrator.log", extra_env=env)
        orch.start(timeout=60)
        cleanup.insert(0, orch.stop)
        dash = Service("dashboard", env={"DASHBOARD_PORT": str(dash_port), "DASHBOARD_ORCHESTRATOR_URL": orch.url,
                                         "DASHBOARD_VIEWER_TOKEN": VIEWER, "LOG_LEVEL": "WARNING"},
                       port=dash_port, log_path=tmp / "dashboard.log").start()
        cleanup.insert(0, dash.stop)
        nodes = [f"bench-{i:03d}" for i in range(args.gpus // args.gpus_per_node)]
        feeder = Feeder(nats_s.url, nodes, gpus=args.gpus_per_node, interval_s=1.0, heartbeat_every_s=5.0,
                        spread=True).start()
        cleanup.insert(0, feeder.stop)
        total = len(nodes) * args.gpus_per_node
        headers = {"Authorization": f"Bearer {VIEWER}"}
        wait_for(lambda: len([g for g in httpx.get(f"{orch.url}/v1/gpus", headers=headers, timeout=10).json()
                              if g["sample"]]) == total, 90, f"{total} GPUs with samples in /v1/gpus", interval=1.0)
        print(f"stack up: {total} GPUs on {len(nodes)} nodes at 1 Hz", flush=True)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.monotonic()
            page.goto(dash.url)
            page.wait_for_function(f"() => document.querySelectorAll('.card[data-gpu-uuid]').length === {total}",
                                   timeout=60000)
            first_paint_s = time.monotonic() - t0
            page.evaluate("window.aetherPerf.take()")  # drop the start-up draws

            page.evaluate("window.aetherPerf.takePush()")

            # Phase A: the browser is the only client.
            ing0 = ingest_lag(orch.url)
            cpu_alone = orchestrator_cpu(orch.proc, args.phase_s)
            lags_alone = page.evaluate("window.aetherPerf.take()")
            push_alone = page.evaluate("window.aetherPerf.takePush()")
            ing1 = ingest_lag(orch.url)

            # Phase B: 99 more clients, in a child process so they do not share this process's GIL.
            dropped_before = metric(httpx.get(f"{orch.url}/metrics", timeout=5).text, "aether_ws_dropped_clients_total")
            ws_url = orch.url.replace("http", "ws", 1) + f"/v1/ws?token={VIEWER}"
            stats_file = tmp / "clients.json"
            run_s = args.phase_s + 10
            child = subprocess.Popen([sys.executable, __file__, "--clients-worker", ws_url, "--n", str(args.clients - 1),
                                      "--seconds", str(run_s), "--compression", args.compression,
                                      "--stats", str(stats_file)])
            wait_for(lambda: metric(httpx.get(f"{orch.url}/metrics", timeout=10).text, "aether_ws_clients")
                     >= args.clients, 60, f"{args.clients} WebSocket clients connected", interval=0.5)
            page.evaluate("window.aetherPerf.take()")
            page.evaluate("window.aetherPerf.takePush()")
            ing2 = ingest_lag(orch.url)
            cpu_loaded = orchestrator_cpu(orch.proc, args.phase_s)
            lags_loaded = page.evaluate("window.aetherPerf.take()")
            push_loaded = page.evaluate("window.aetherPerf.takePush()")
            ing3 = ingest_lag(orch.url)
            child.wait(timeout=run_s + 60)
            dropped = metric(httpx.get(f"{orch.url}/metrics", timeout=5).text,
                             "aether_ws_dropped_clients_total") - dropped_before
            page.screenshot(path=str(Path(args.out).with_suffix(".png")))
            browser.close()

        clients = json.loads(stats_file.read_text())
        client_lags = [x for c in clients for x in c["lags"]]
        # "Falling behind" shows as a lag that grows: compare each client's last tenth of messages to its first.
        growth = []
        for c in clients:
            lags = c["lags"]
            if len(lags) >= 20:
                k = max(1, len(lags) // 10)
                growth.append(sum(lags[-k:]) / k - sum(lags[:k]) / k)
        msgs = sum(c["messages"] for c in clients)
        nbytes = sum(c["bytes"] for c in clients)
        feeder_tick = percentiles([s * 1000 for s in feeder.publish_s[5:]])
        b_alone = percentiles(lags_alone)
        b_loaded = percentiles(lags_loaded)
        c_p = percentiles(client_lags)
        return {
            "browser_lag_p50_ms": b_loaded["p50"],
            "browser_lag_p95_ms": b_loaded["p95"],
            "browser_lag_p99_ms": b_loaded["p99"],
            "browser_lag_samples": len(lags_loaded),
            "browser_alone_lag_p50_ms": b_alone["p50"],
            "browser_alone_lag_p99_ms": b_alone["p99"],
            # Where the lag goes: sample -> committed (ingest), push -> received by the page (delivery).
            "ingest_lag_mean_ms_browser_only": mean_between(ing0, ing1),
            "ingest_lag_mean_ms": mean_between(ing2, ing3),
            "push_to_page_p50_ms": percentiles(push_loaded)["p50"],
            "push_to_page_p99_ms": percentiles(push_loaded)["p99"],
            "push_to_page_alone_p99_ms": percentiles(push_alone)["p99"],
            "clients": args.clients,
            "orchestrator_cpu_pct": cpu_loaded,
            "orchestrator_cpu_pct_browser_only": cpu_alone,
            "ws_messages_per_s_per_client": msgs / len(clients) / run_s,
            "ws_messages_per_s_total": msgs / run_s,
            "ws_mbytes_per_s_total": nbytes / run_s / 1e6,
            "ws_client_lag_p50_ms": c_p["p50"],
            "ws_client_lag_p99_ms": c_p["p99"],
            "ws_client_lag_growth_max_ms": max(growth) if growth else None,
            "ws_clients_dropped": dropped,
            "ws_clients_closed_early": sum(c["closed_early"] for c in clients),
            "compression": args.compression,
            "push_interval_s": args.push_interval or 0.25,
            "gpus": total,
            "page_first_full_render_s": first_paint_s,
            "feeder_publish_p99_ms": feeder_tick["p99"],
            "feeder_publish_errors": feeder.publish_errors,
            "page_errors": errors[:5],
            "cpu_cores": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        }
    finally:
        for fn in cleanup:
            try:
                fn()
            except Exception as exc:
                print(f"cleanup: {exc!r}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/dashboard.json")
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--clients", type=int, default=100, help="WebSocket clients in all, the browser included")
    ap.add_argument("--phase-s", type=float, default=30.0, help="seconds measured per phase")
    ap.add_argument("--push-interval", type=float, help="orchestrator's WS_PUSH_INTERVAL_S (default: its own, 0.25)")
    ap.add_argument("--compression", choices=("deflate", "none"), default="deflate",
                    help="what the Python clients offer; browsers always offer permessage-deflate")
    ap.add_argument("--clients-worker", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--stats", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.clients_worker:
        stats = asyncio.run(_clients_main(args.clients_worker, args.n, args.seconds,
                                          None if args.compression == "none" else "deflate"))
        Path(args.stats).write_text(json.dumps(stats))
        return
    result = run(args)
    write_json(args.out, result)
    rows = [
        {"what": "browser, alone", "p50_ms": result["browser_alone_lag_p50_ms"], "p99_ms": result["browser_alone_lag_p99_ms"],
         "orch_cpu_pct": result["orchestrator_cpu_pct_browser_only"]},
        {"what": f"browser, {args.clients} clients", "p50_ms": result["browser_lag_p50_ms"],
         "p99_ms": result["browser_lag_p99_ms"], "orch_cpu_pct": result["orchestrator_cpu_pct"]},
        {"what": f"{args.clients - 1} python clients", "p50_ms": result["ws_client_lag_p50_ms"],
         "p99_ms": result["ws_client_lag_p99_ms"], "orch_cpu_pct": result["orchestrator_cpu_pct"]},
    ]
    print_table(rows, title=f"sample -> screen lag, {result['gpus']} GPUs at 1 Hz")
    print(f"messages/s per client {result['ws_messages_per_s_per_client']:.1f}, total {result['ws_messages_per_s_total']:.0f}/s, "
          f"{result['ws_mbytes_per_s_total']:.1f} MB/s; dropped {result['ws_clients_dropped']:.0f}, "
          f"closed early {result['ws_clients_closed_early']}, lag growth max {result['ws_client_lag_growth_max_ms']} ms")
    svg_bar_chart(Path(args.out).with_suffix(".svg"), f"Sample to screen lag, {result['gpus']} GPUs at 1 Hz",
                  [r["what"] for r in rows], {"p50": [r["p50_ms"] for r in rows], "p99": [r["p99_ms"] for r in rows]},
                  unit=" ms")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
