"""The sampling loop: one read of every GPU per tick, off the event loop, on a monotonic-clock grid that does not
drift; each tick becomes one TelemetryBatch in the telemetry outbox."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from agent.metrics import AgentMetrics
from agent.outbox import Item, Outbox
from agent.source import GpuSource
from services import subjects
from services.schemas import TelemetryBatch, TelemetrySample
from services.schemas.base import utcnow

log = logging.getLogger("aether.agent.sampler")


class Sampler:
    def __init__(self, *, node: str, source: GpuSource, interval_s: float, outbox: Outbox, metrics: AgentMetrics,
                 executor: ThreadPoolExecutor) -> None:
        self.node = node
        self.source = source
        self.interval_s = interval_s
        self.outbox = outbox
        self.metrics = metrics
        self.executor = executor
        self.seq = 0
        self.last_tick_mono: float | None = None
        self.last_samples: list[TelemetrySample] = []
        self._subject = subjects.telemetry(node)

    def _read(self) -> tuple[list[TelemetrySample], float]:
        t0 = time.perf_counter()
        samples = self.source.read(utcnow())
        return samples, time.perf_counter() - t0

    async def tick(self) -> TelemetryBatch | None:
        """Read once and queue the batch (None when every GPU is silenced)."""
        loop = asyncio.get_running_loop()
        try:
            samples, took = await loop.run_in_executor(self.executor, self._read)
        except Exception:
            # A bug or a library failure must not end sampling: log it and try again next tick.
            log.exception("reading GPUs failed")
            return None
        self.metrics.read_seconds.observe(took)
        self.metrics.ticks.inc()
        self.last_tick_mono = loop.time()
        self.last_samples = samples
        self.metrics.gpus_unhealthy.set(sum(1 for s in samples if not s.healthy))
        if not samples:
            return None
        batch = TelemetryBatch(node=self.node, seq=self.seq, time=samples[0].time, interval_s=self.interval_s,
                               samples=samples)
        self.seq += 1
        self.outbox.put(Item(self._subject, batch.to_bytes(), batch.msg_id(), droppable=True, samples=len(samples)))
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 0
        while True:
            await self.tick()
            k += 1
            target = start + k * self.interval_s
            now = loop.time()
            if now > target:
                # The read overran one or more ticks: skip them and stay on the grid rather than bunch up.
                missed = int((now - target) // self.interval_s) + 1
                k += missed
                target = start + k * self.interval_s
                self.metrics.ticks_skipped.inc(missed)
            await asyncio.sleep(target - loop.time())
            self.metrics.tick_lag.observe(max(0.0, loop.time() - target))
