"""What the single-machine stack runs: every supervised program, its command, port and health URL.
`python scripts/stack.py names|ports|health-urls [--apps|--infra]` lists them for the shell scripts."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STATE = ROOT / ".aether"
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("AETHER_PG_BIN", "/usr/lib/postgresql/15/bin"))

PG_PORT, NATS_PORT, NATS_MONITOR_PORT = 5432, 4222, 8222
ORCHESTRATOR_PORT, AI_CORE_PORT, DASHBOARD_PORT, AGENT_FIRST_PORT = 8080, 8000, 3000, 9501

PG_DATA = STATE / "data" / "postgres"
PG_SOCKET_DIR = STATE / "run" / "postgres"
NATS_STORE = STATE / "data" / "nats"
NATS_CONF = STATE / "nats" / "nats-server.conf"
SIM_NODES = (("sim-1", 4), ("sim-2", 4))


@dataclass
class Program:
    """One supervisord program."""

    name: str
    command: list[str]
    ports: tuple[int, ...] = ()        # TCP ports it listens on
    health_url: str | None = None      # answers 200 once the program is up
    infra: bool = False                # PostgreSQL and NATS: started before, stopped after the services
    priority: int = 500                # supervisord starts low numbers first and stops them last
    module: str | None = None          # `python -m` module; the program exists only once its code does
    env: dict[str, str] = field(default_factory=dict)
    stopsignal: str = "TERM"
    stopwaitsecs: int = 20
    kill_group: bool = True            # stop the process group too (not for agents: jobs outlive a restart)
    oneshot: bool = False              # runs once when the scripts start it, is not restarted

    def present(self) -> bool:
        if self.module is None:
            return True
        try:
            return importlib.util.find_spec(f"{self.module}.__main__") is not None
        except ImportError:
            return False


def real_gpu_count() -> int:
    """GPUs NVML can see here (0 without a driver); AETHER_AGENTS=simulated|nvml forces the choice."""
    forced = os.environ.get("AETHER_AGENTS", "").lower()
    if forced == "simulated":
        return 0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        if forced == "nvml":
            raise SystemExit("AETHER_AGENTS=nvml but NVML finds no GPU (is the NVIDIA driver loaded?)") from None
        return 0


def agent_nodes() -> list[tuple[str, list[str]]]:
    """(node, extra agent args): the real GPUs of this host when NVML finds any, else two simulated nodes."""
    if real_gpu_count() > 0:
        from agent.settings import default_node_name

        return [(default_node_name(), [])]
    return [(node, ["--simulated", "--gpus", str(gpus)]) for node, gpus in SIM_NODES]


def python_program(name: str, module: str, port: int, health: str, priority: int, args: list[str] | None = None,
                   env: dict[str, str] | None = None, kill_group: bool = True) -> Program:
    return Program(name=name, command=[str(VENV_BIN / "python"), "-m", module, *(args or [])], ports=(port,),
                   health_url=f"http://127.0.0.1:{port}{health}", priority=priority, module=module, env=env or {},
                   kill_group=kill_group)


def postgres_command(timescale: bool) -> list[str]:
    opts = {
        "port": PG_PORT, "listen_addresses": "127.0.0.1",
        # Local connections only through a socket in a 0700 folder of the PostgreSQL account.
        "unix_socket_directories": PG_SOCKET_DIR, "unix_socket_permissions": "0700",
        "max_connections": 200, "shared_buffers": "256MB",
        "log_min_duration_statement": "5s", "log_checkpoints": "on",
    }
    if timescale:
        opts |= {"shared_preload_libraries": "timescaledb", "timescaledb.telemetry_level": "off",
                 "timescaledb.max_background_workers": 8, "max_worker_processes": 16}
    cmd = [str(PG_BIN / "postgres"), "-D", str(PG_DATA)]
    for key, value in opts.items():
        cmd += ["-c", f"{key}={value}"]
    return cmd


def programs(timescale: bool | None = None) -> list[Program]:
    """Every program of the stack, infra first. `timescale` None: detect the installed extension."""
    if timescale is None:
        from services.localstack import timescaledb_available

        timescale = timescaledb_available()
    progs = [
        Program("postgres", postgres_command(timescale), ports=(PG_PORT,), infra=True, priority=10,
                stopsignal="INT", stopwaitsecs=60, kill_group=False),  # SIGINT: fast shutdown
        Program("nats", [str(VENV_BIN / "nats-server"), "-c", str(NATS_CONF)], ports=(NATS_PORT, NATS_MONITOR_PORT),
                health_url=f"http://127.0.0.1:{NATS_MONITOR_PORT}/healthz?js-enabled-only=true",
                infra=True, priority=10, stopwaitsecs=30, kill_group=False),
        python_program("ai_core", "ai_core", AI_CORE_PORT, "/health", 200),
        python_program("orchestrator", "orchestrator", ORCHESTRATOR_PORT, "/v1/health", 300),
        python_program("dashboard", "dashboard", DASHBOARD_PORT, "/health", 500),
    ]
    # The first placement model, trained in the background when the AI core has none (setup.sh starts it).
    progs.append(Program("ai_core-train", [str(VENV_BIN / "python"), "-m", "ai_core.train", "--synthetic", "20000"],
                         priority=600, module="ai_core", oneshot=True))
    for i, (node, args) in enumerate(agent_nodes()):
        port = AGENT_FIRST_PORT + i
        progs.append(python_program(
            f"agent-{node}", "agent", port, "/health", 400, ["--node", node, "--http-port", str(port), *args],
            # The agent gets only its node's NATS account, as it would on a machine of its own.
            env={"AETHER_CREDENTIALS": str(STATE / "nodes" / f"{node}.env")}, kill_group=False))
    return progs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("what", choices=["names", "ports", "health-urls", "nodes", "missing"])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--apps", action="store_true", help="only the Aether services, not PostgreSQL/NATS")
    group.add_argument("--infra", action="store_true", help="only PostgreSQL and NATS")
    group.add_argument("--oneshot", action="store_true", help="only the programs that run once (training)")
    args = ap.parse_args(argv)
    progs = [p for p in programs() if (not args.apps or not p.infra) and (not args.infra or p.infra)
             and (p.oneshot == args.oneshot)]
    if args.what == "missing":
        for p in progs:
            if not p.present():
                print(p.name)
        return 0
    progs = [p for p in progs if p.present()]
    if args.what == "names":
        print(" ".join(p.name for p in progs))
    elif args.what == "ports":
        print(" ".join(str(port) for port in sorted({port for p in progs for port in p.ports})))
    elif args.what == "health-urls":
        for p in progs:
            if p.health_url:
                print(p.name, p.health_url)
    elif args.what == "nodes":
        print(" ".join(name for name, _ in agent_nodes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
