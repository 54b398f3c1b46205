"""Heartbeats on `aether.heartbeat.<node>`: inventory, versions, running jobs and interval, once at start and every
few seconds (core NATS: a lost heartbeat is replaced by the next one)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from datetime import datetime

from nats.aio.client import Client as NATS

from agent import AGENT_VERSION
from agent.metrics import AgentMetrics
from agent.source import GpuSource
from services import subjects
from services.schemas import Heartbeat
from services.schemas.base import utcnow

log = logging.getLogger("aether.agent.heartbeat")


class Heartbeats:
    def __init__(self, *, nc: NATS, node: str, source: GpuSource, running_jobs: Callable[[], list[str]],
                 interval_s: float, every_s: float, started_at: datetime, metrics: AgentMetrics) -> None:
        self.nc = nc
        self.node = node
        self.source = source
        self.running_jobs = running_jobs
        self.interval_s = interval_s
        self.every_s = every_s
        self.started_at = started_at
        self.metrics = metrics
        self.hostname = socket.gethostname()
        self._subject = subjects.heartbeat(node)

    def build(self) -> Heartbeat:
        return Heartbeat(node=self.node, time=utcnow(), agent_version=AGENT_VERSION, started_at=self.started_at,
                         interval_s=self.interval_s, simulated=self.source.simulated,
                         driver_version=self.source.driver_version, cuda_version=self.source.cuda_version,
                         gpus=self.source.inventory(), running_jobs=self.running_jobs(), hostname=self.hostname)

    async def publish(self) -> None:
        try:
            await self.nc.publish(self._subject, self.build().to_bytes())
            self.metrics.heartbeats.inc()
        except Exception as exc:  # NATS away: the next heartbeat will do
            log.warning("heartbeat not published", extra={"error": repr(exc)})

    async def run(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(self.every_s)
