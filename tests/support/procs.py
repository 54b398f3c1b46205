"""Run Aether's services as real processes in tests: start with an environment, wait for /health, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.localstack import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
TEST_TOKEN = "test-admin-token-0123456789"


@dataclass
class Service:
    """A `python -m <module>` process with its output in `log_path`."""

    module: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, health_path: str | None = "/health", timeout: float = 30.0) -> Service:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.log_path is None:
            self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"aether-{self.module}-{os.getpid()}-{time.time_ns()}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        if health_path and self.port:
            def up():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.module} exited {self.proc.returncode}:\n{self.tail()}")
                return httpx.get(self.url + health_path, timeout=1.0).status_code == 200

            try:
                wait_for(up, timeout, f"{self.module} /health")
            except Exception:
                self.stop()
                raise
        return self

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def orchestrator(nats_url: str, database_url: str, *, ai_core_url: str = "http://127.0.0.1:9", port: int | None = None,
                 extra_env: dict[str, str] | None = None, log_path: Path | None = None) -> Service:
    port = port or free_port()
    env = {"NATS_URL": nats_url, "DATABASE_URL": database_url, "AI_CORE_URL": ai_core_url,
           "ORCHESTRATOR_PORT": str(port), "AETHER_API_TOKEN": TEST_TOKEN, "LOG_LEVEL": "INFO",
           **(extra_env or {})}
    return Service("orchestrator", env=env, port=port, log_path=log_path)


def auth_headers(token: str = TEST_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
