"""Who holds the stack's ports, waiting for them to close, and stopping Aether processes left behind by a
supervisor that died (`busy`, `wait-free`, `stop-strays`). Processes that are not Aether's are never touched."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack


def holders(ports: list[int]) -> dict[int, psutil.Process | None]:
    """Listening sockets on `ports`: the owning process, or None when it cannot be seen (another user's)."""
    found: dict[int, psutil.Process | None] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports:
            proc = None
            if conn.pid:
                try:
                    proc = psutil.Process(conn.pid)
                except psutil.Error:
                    proc = None
            found.setdefault(conn.laddr.port, proc)
    return found


def is_ours(proc: psutil.Process) -> bool:
    """Started by this checkout's supervisord (its children carry its socket in SUPERVISOR_SERVER_URL), or a
    PostgreSQL / nats-server on this checkout's data and configuration. Tests' servers on the same venv are not."""
    sock = f"unix://{stack.STATE / 'run' / 'supervisor.sock'}"
    try:
        if proc.environ().get("SUPERVISOR_SERVER_URL") == sock:
            return True
    except psutil.Error:
        pass
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return str(stack.PG_DATA) in cmdline or str(stack.NATS_CONF) in cmdline


def describe(port: int, proc: psutil.Process | None) -> str:
    if proc is None:
        return f"port {port}: held by a process this user cannot see"
    try:
        cmd = " ".join(proc.cmdline())[:140]
    except psutil.Error:
        cmd = "?"
    who = "Aether's" if is_ours(proc) else "not Aether's"
    return f"port {port}: pid {proc.pid} ({who}) {cmd}"


def stop_strays(ports: list[int], timeout: float = 30.0) -> list[int]:
    """Stop Aether processes still listening on our ports (PostgreSQL with SIGINT: fast shutdown)."""
    victims: dict[int, psutil.Process] = {}
    for proc in holders(ports).values():
        if proc is not None and is_ours(proc):
            victims[proc.pid] = proc
    for proc in victims.values():
        try:
            sig = signal.SIGINT if "postgres" in proc.name() else signal.SIGTERM
            proc.send_signal(sig)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(victims.values()), timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return sorted(victims)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("action", choices=["busy", "wait-free", "stop-strays"])
    ap.add_argument("ports", nargs="*", type=int, help="default: every port of the stack")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    ports = args.ports or sorted({port for p in stack.programs() for port in p.ports})

    if args.action == "stop-strays":
        stopped = stop_strays(ports, args.timeout)
        if stopped:
            print(f"stopped Aether processes left without a supervisor: {' '.join(map(str, stopped))}")
        return 0
    if args.action == "wait-free":
        deadline = time.monotonic() + args.timeout
        while holders(ports) and time.monotonic() < deadline:
            time.sleep(0.2)
    busy = holders(ports)
    for port, proc in sorted(busy.items()):
        print(describe(port, proc))
    return 1 if busy else 0


if __name__ == "__main__":
    sys.exit(main())
