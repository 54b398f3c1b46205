"""JetStream publishing that survives NATS going away: a bounded local buffer (oldest droppable message dropped
first, counted), retries with exponential back-off, and a `Nats-Msg-Id` on every message so a retry is stored once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from agent.metrics import AgentMetrics

log = logging.getLogger("aether.agent.outbox")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
WARN_EVERY_S = 30.0


@dataclass(slots=True)
class Item:
    subject: str
    payload: bytes
    msg_id: str
    droppable: bool = True
    samples: int = 0  # GPU samples inside (telemetry), for the metrics
    batchable: bool = False  # may be published concurrently with its batchable neighbours (log lines)
    on_stored: Callable[[], None] | None = None  # called once JetStream has acknowledged it


class Outbox:
    """Publishes items in order, one at a time (or a window of consecutive batchable items at once)."""

    def __init__(self, name: str, nc: NATS, js: JetStreamContext, ensure_stream: Callable[[], Awaitable[None]],
                 metrics: AgentMetrics, *, max_items: int, timeout_s: float = 2.0, window: int = 1) -> None:
        self.name = name
        self.nc = nc
        self.js = js
        self.ensure_stream = ensure_stream
        self.metrics = metrics
        self.max_items = max_items
        self.timeout_s = timeout_s
        self.window = window
        self.dropped = 0
        self.published = 0
        self._q: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._depth = metrics.buffer_depth.labels(name)
        self._dropped = metrics.buffer_dropped.labels(name)
        self._errors = metrics.publish_errors.labels(name)

    def __len__(self) -> int:
        return len(self._q)

    def put(self, item: Item) -> None:
        """Never blocks and never fails: when full, the oldest droppable item makes room."""
        if len(self._q) >= self.max_items:
            self._drop_oldest()
        self._q.append(item)
        self._idle.clear()
        self._wake.set()
        self._depth.set(len(self._q))

    def _drop_oldest(self) -> None:
        for i, old in enumerate(self._q):
            if old.droppable:
                del self._q[i]
                self.dropped += 1
                self._dropped.inc()
                return
        # Nothing droppable (job state changes): keep them all; they are few and must not be lost.

    async def wait_empty(self, within_s: float) -> bool:
        """True once everything put so far is stored (for shutdown and tests)."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        failures = 0
        last_warn = float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            if not self._q:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self.nc.is_connected:
                # Publishing now would only pile requests into the client's reconnect buffer: wait and retry.
                failures += 1
                await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures, 6)))
                continue
            batch = [self._q.popleft()]
            while batch[0].batchable and len(batch) < self.window and self._q and self._q[0].batchable:
                batch.append(self._q.popleft())
            try:
                if len(batch) == 1:
                    await self._publish(batch[0])
                else:
                    results = await asyncio.gather(*(self._publish(i) for i in batch), return_exceptions=True)
                    err = next((r for r in results if isinstance(r, BaseException)), None)
                    if err is not None:
                        raise err
            except asyncio.CancelledError:
                self._q.extendleft(reversed(batch))
                raise
            except Exception as exc:
                # Put the whole window back in order; what was stored is de-duplicated by its message id.
                self._q.extendleft(reversed(batch))
                while len(self._q) > self.max_items and any(i.droppable for i in self._q):
                    self._drop_oldest()
                failures += 1
                self._errors.inc()
                now = loop.time()
                if now - last_warn >= WARN_EVERY_S:
                    last_warn = now
                    log.warning("publish failed, buffering and retrying", extra={
                        "outbox": self.name, "error": repr(exc), "buffered": len(self._q), "dropped": self.dropped})
                if isinstance(exc, NoStreamResponseError):
                    # The stream is gone (e.g. a nats-server restarted on an empty store): create it again.
                    try:
                        await self.ensure_stream()
                    except Exception as e:
                        log.warning("stream not ensured", extra={"outbox": self.name, "error": repr(e)})
                await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures, 6)))
                continue
            if failures:
                log.info("publishing again", extra={"outbox": self.name, "after_failures": failures,
                                                    "buffered": len(self._q)})
                failures = 0
            self.published += len(batch)
            for item in batch:
                if item.on_stored is not None:
                    item.on_stored()
                if item.samples:
                    self.metrics.samples_published.inc(item.samples)
                    self.metrics.batches_published.inc()
            self._depth.set(len(self._q))

    async def _publish(self, item: Item) -> None:
        await self.js.publish(item.subject, item.payload, timeout=self.timeout_s,
                              headers={"Nats-Msg-Id": item.msg_id})
