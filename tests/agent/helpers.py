"""Helpers for the agent's tests: poll-with-deadline, a NATS message collector, an in-process agent."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS

from agent.app import Agent
from agent.metrics import AgentMetrics
from agent.settings import AgentSettings
from agent.sim import SimSource
from agent.source import GpuSource
from tests.support.waiting import until  # noqa: F401  (re-exported for the tests here)


class Collector:
    """Every message on `subject`, decoded as JSON, in arrival order."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.raw: list[Any] = []

    async def subscribe(self, nc: NATS, subject: str) -> Collector:
        async def on(msg) -> None:
            self.raw.append(msg)
            try:
                self.messages.append(orjson.loads(msg.data))
            except orjson.JSONDecodeError:
                self.messages.append({"_raw": msg.data})

        await nc.subscribe(subject, cb=on)
        await nc.flush()
        return self

    def where(self, **match: Any) -> list[dict[str, Any]]:
        return [m for m in self.messages if all(m.get(k) == v for k, v in match.items())]


def work_dir() -> Path:
    """A work dir an unprivileged job user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="aether-agent-test-"))
    os.chmod(path, 0o711)
    return path


def settings(nats_url: str, node: str, wd: Path, **kw: Any) -> AgentSettings:
    base = dict(nats_url=nats_url, node=node, simulated=True, gpus=2, interval_s=0.1, heartbeat_s=30.0,
                http_port=0, work_dir=wd, kill_grace_s=2.0, seed=1)
    base.update(kw)
    return AgentSettings(**base)


@contextlib.asynccontextmanager
async def running_agent(s: AgentSettings, source: GpuSource | None = None,
                        metrics: AgentMetrics | None = None) -> AsyncIterator[Agent]:
    src = source or SimSource(s.node, s.gpus, s.gpu_model, seed=s.effective_seed(), interval_s=s.interval_s)
    agent = Agent(s, src, metrics)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()
