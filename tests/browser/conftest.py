"""Browser tests: Debian's chromium through Playwright against the real stack (nats-server, PostgreSQL,
orchestrator and dashboard processes) with simulated GPUs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services import subjects
from services.localstack import free_port, wait_for
from services.schemas import CommandReply, FaultCommand
from tests.browser.feeder import Feeder
from tests.support.procs import TEST_TOKEN, Service, auth_headers, orchestrator

CHROMIUM = os.environ.get("AETHER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
VIEWER_TOKEN = "viewer-token-browser-0123456789"
OPERATOR_TOKEN = "operator-token-browser-0123456789"
# Real simulated agents by default; AETHER_BROWSER_FEEDER=1 publishes from the test instead (no agent needed).
USE_FEEDER = os.environ.get("AETHER_BROWSER_FEEDER") == "1"


def pytest_collection_modifyitems(config, items):
    # The browser is a test dependency (./setup.sh and .ci/run install it). On a developer's machine without it the
    # browser tests are skipped, saying why; in CI (CI=true, set by .ci/run) a missing browser is a failure.
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return
    if os.environ.get("CI") == "true" and any("browser" in item.keywords for item in items):
        raise pytest.UsageError(f"{CHROMIUM} not installed, and CI must run the browser tests")
    skip = pytest.mark.skip(reason=f"{CHROMIUM} not installed (apt-get install chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def chromium():
    # Module scope, not session: while sync_playwright is open it holds a running event loop on this
    # thread, which breaks every pytest-asyncio test that runs after it.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def agent(nats_url: str, node: str, gpus: int, work_dir: Path, log_path: Path) -> Service:
    """`python -m agent --simulated`, sampling twice a second so a test sees changes quickly."""
    port = free_port()
    return Service("agent", args=["--simulated", "--node", node, "--gpus", str(gpus), "--nats", nats_url,
                                  "--http-port", str(port), "--interval", "0.5", "--heartbeat", "1",
                                  "--work-dir", str(work_dir)], port=port, log_path=log_path)


@dataclass
class Stack:
    nats_url: str
    database_url: str
    orch: Service
    dash: Service
    nodes: list[str]
    gpus_per_node: int
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    agents: list[Service] = field(default_factory=list)
    feeder: Feeder | None = None

    def uuids(self, timeout: float = 30.0) -> list[str]:
        """The GPUs of this stack's nodes, once the orchestrator lists every one of them with a sample."""
        want = len(self.nodes) * self.gpus_per_node

        def listed():
            gpus = httpx.get(f"{self.orch.url}/v1/gpus", headers=auth_headers(), timeout=5).json()
            mine = [g["uuid"] for g in gpus if g["node"] in self.nodes and g["sample"]]
            return mine if len(mine) == want else None

        return wait_for(listed, timeout, f"{want} GPUs in /v1/gpus", interval=0.2)

    def inject(self, node: str, fault: FaultCommand) -> CommandReply:
        """Ask a simulated agent to inject a fault (request/reply on aether.cmd.<node>.fault)."""
        async def ask() -> CommandReply:
            import nats

            nc = await nats.connect(self.nats_url)
            try:
                msg = await nc.request(subjects.cmd(node, "fault"), fault.to_bytes(), timeout=10)
                return CommandReply.model_validate_json(msg.data)
            finally:
                await nc.close()

        # Playwright's sync API keeps an event loop on this thread: ask from a thread of its own.
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(asyncio.run, ask()).result(30)
        assert reply.ok, reply
        return reply

    def make_values_move(self) -> None:
        """Idle simulated GPUs read nearly constant values: drift utilisation on every GPU so each card visibly
        changes every sample (the feeder's values move by themselves)."""
        if self.feeder is not None:
            return
        self.uuids()  # the agents are publishing, hence listening for commands
        for node in self.nodes:
            self.inject(node, FaultCommand(fault="drift", metric="util_gpu_pct", rate_per_s=4.0, duration_s=120))

    def restart_orchestrator(self, crash: bool = True) -> None:
        """Stop the orchestrator (SIGKILL when `crash`), then start a new one on the same port."""
        if crash:
            self.orch.kill()
        else:
            self.orch.stop()
        self.orch = orchestrator(self.nats_url, self.database_url, port=self.orch.port, extra_env=self.extra_env,
                                 log_path=self.log_dir / "orchestrator-2.log").start()


@pytest.fixture
def make_stack(nats_server, database_url, unique_node, output_dir) -> Iterator:
    """Start orchestrator + dashboard + simulated GPUs (2 nodes x 4 GPUs); `embed_viewer` puts the viewer token
    in the dashboard's /config.js, otherwise the page has to ask for one."""
    started: list = []

    def make(embed_viewer: bool = False, nodes: int = 2, gpus: int = 4) -> Stack:
        dash_port = free_port()
        env = {"AETHER_VIEWER_TOKEN": VIEWER_TOKEN, "AETHER_OPERATOR_TOKEN": OPERATOR_TOKEN,
               "CORS_ORIGINS": f'["http://127.0.0.1:{dash_port}"]'}
        orch = orchestrator(nats_server.url, database_url, extra_env=env, log_path=output_dir / "orchestrator.log")
        orch.start()
        started.append(orch)
        dash_env = {"DASHBOARD_PORT": str(dash_port), "DASHBOARD_ORCHESTRATOR_URL": orch.url}
        if embed_viewer:
            dash_env["DASHBOARD_VIEWER_TOKEN"] = VIEWER_TOKEN
        dash = Service("dashboard", env=dash_env, port=dash_port, log_path=output_dir / "dashboard.log").start()
        started.append(dash)
        names = [f"{unique_node}-{i + 1}" for i in range(nodes)]
        stack = Stack(nats_server.url, database_url, orch, dash, names, gpus, output_dir, env)
        started.append(stack)
        if USE_FEEDER:
            stack.feeder = Feeder(nats_server.url, names, gpus=gpus, interval_s=0.5).start()
            started.append(stack.feeder)
        else:
            for name in names:
                a = agent(nats_server.url, name, gpus, output_dir / f"agent-{name}", output_dir / f"agent-{name}.log")
                started.append(a)
                stack.agents.append(a.start())
        return stack

    yield make
    for thing in reversed(started):
        with contextlib.suppress(Exception):
            if isinstance(thing, Stack):
                thing.orch.stop()
            else:
                thing.stop()


@pytest.fixture
def page(chromium, output_dir):
    """A fresh browser context (empty localStorage) whose uncaught page errors the test can assert on."""
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    yield pg
    context.close()


__all__ = ["OPERATOR_TOKEN", "TEST_TOKEN", "VIEWER_TOKEN"]
