"""`python -m agent --nats nats://HOST:4222 --node NAME [--simulated] [--gpus 4] [--gpu-model H100-80GB]
[--interval 1.0] [--http-port 9501]`: join a node to the cluster. Flags override AGENT_* / NATS_* settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from agent import AGENT_VERSION
from agent.app import Agent
from agent.errors import NoGpuFound
from agent.metrics import AgentMetrics
from agent.nvml import NvmlSource
from agent.settings import AgentSettings
from agent.sim import SimSource
from agent.source import GpuSource
from services import gpu_specs, jsonlog
from services.errors import AetherError

log = logging.getLogger("aether.agent")

EXIT_CONFIG = 2
EXIT_NO_GPU = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent", description=__doc__.split("\n")[0])
    p.add_argument("--nats", dest="nats_url", help="NATS URL(s), comma-separated (env NATS_URL)")
    p.add_argument("--node", help="node name, a subject token (env AGENT_NODE; default: host name)")
    p.add_argument("--simulated", action="store_true", default=None,
                   help="simulate GPUs instead of reading NVML (env AGENT_SIMULATED)")
    p.add_argument("--gpus", type=int, help="simulated GPU count (env AGENT_GPUS, default 4)")
    p.add_argument("--gpu-model", dest="gpu_model", help=f"simulated model: {', '.join(gpu_specs.SPECS)}")
    p.add_argument("--interval", dest="interval_s", type=float, help="sampling interval in s, >= 0.1 (default 1)")
    p.add_argument("--heartbeat", dest="heartbeat_s", type=float, help="heartbeat period in s (default 5)")
    p.add_argument("--http-host", dest="http_host", help="bind address of /health and /metrics (default 127.0.0.1)")
    p.add_argument("--http-port", dest="http_port", type=int, help="port of /health and /metrics; 0 = off")
    p.add_argument("--work-dir", dest="work_dir", help="state file and job directories")
    p.add_argument("--seed", type=int, help="simulator seed (default: from the node name)")
    p.add_argument("--log-level", dest="log_level")
    p.add_argument("--version", action="version", version=AGENT_VERSION)
    return p.parse_args(argv)


def make_source(s: AgentSettings, metrics: AgentMetrics) -> GpuSource:
    if s.simulated:
        return SimSource(s.node, s.gpus, s.gpu_model, ambient_c=s.ambient_c, seed=s.effective_seed(),
                         interval_s=s.interval_s)
    return NvmlSource.open(s.node, metrics, pcie_min_period_s=s.pcie_min_period_s,
                           slow_period_s=s.nvml_slow_period_s)


async def run(s: AgentSettings) -> int:
    metrics = AgentMetrics()
    try:
        source = make_source(s, metrics)
    except NoGpuFound as exc:
        log.error("no GPU", extra={"error": exc.message, "code": exc.code})
        print(f"aether agent: {exc.message}", file=sys.stderr)
        return EXIT_NO_GPU
    agent = Agent(s, source, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.create_task(agent.start())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if start.done() and start.exception() is not None:
        exc = start.exception()
        log.error("agent failed to start", exc_info=exc)
        await agent.stop()
        return EXIT_CONFIG if isinstance(exc, AetherError) else 1
    await stop.wait()
    if not start.done():
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    await agent.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = AgentSettings.load(**overrides)
    jsonlog.configure("agent", settings.log_level)
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
