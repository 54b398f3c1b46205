"""Outgoing alert webhooks: a bounded queue (oldest dropped and counted when full) drained by a few workers that
POST JSON and retry with exponential back-off and jitter; nothing here ever waits on the ingest path."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from orchestrator.alerts.config import WebhookTarget
from services.schemas.alerts import Alert

log = logging.getLogger("aether.alerts.webhook")

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class Delivery:
    target: WebhookTarget
    body: bytes
    alert_id: int | None
    event: str


def _where(url: str) -> str:
    # Webhook URLs often carry a token in the path: log the host only.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class WebhookSender:
    def __init__(self, targets: list[WebhookTarget], *, queue_size: int, workers: int,
                 registry: CollectorRegistry | None = None) -> None:
        self.targets = targets
        self.queue: deque[Delivery] = deque()
        self.queue_size = queue_size
        self.workers = workers
        self._ready = asyncio.Event()
        self._inflight: set[tuple[str, int | None]] = set()
        self._held: dict[tuple[str, int | None], deque[Delivery]] = {}
        self.client: httpx.AsyncClient | None = None
        r = registry
        self.m_deliveries = Counter("aether_alert_webhook_deliveries_total",
                                    "Webhook deliveries by result (delivered, failed, dropped)", ["result"], registry=r)
        self.m_attempts = Counter("aether_alert_webhook_attempts_total", "Webhook POST attempts, retries included",
                                  registry=r)
        self.m_queue = Gauge("aether_alert_webhook_queue", "Webhook deliveries waiting", registry=r)

    def submit(self, event: str, alert: Alert) -> None:
        """Queue the event for every target that wants it; never blocks, never raises."""
        if not self.targets:
            return
        body = orjson.dumps({"v": 1, "event": event, "alert": alert.model_dump(mode="json")})
        for target in self.targets:
            if alert.severity not in target.severities or event not in target.events:
                continue
            if len(self.queue) >= self.queue_size:
                dropped = self.queue.popleft()
                self.m_deliveries.labels("dropped").inc()
                log.warning("webhook queue full: oldest delivery dropped",
                            extra={"alert_id": dropped.alert_id, "event": dropped.event,
                                   "target": _where(dropped.target.url)})
            self.queue.append(Delivery(target, body, alert.id, event))
        self.m_queue.set(len(self.queue))
        self._ready.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            self.client = client
            await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        while True:
            while not self.queue:
                self._ready.clear()
                await self._ready.wait()
            d = self.queue.popleft()
            self.m_queue.set(len(self.queue))
            key = (d.target.url, d.alert_id)
            if key in self._inflight:
                # One alert's events reach a receiver in order: wait behind the one being delivered (retried).
                self._held.setdefault(key, deque()).append(d)
                continue
            self._inflight.add(key)
            try:
                await self.deliver(d)
            finally:
                self._inflight.discard(key)
                held = self._held.get(key)
                if held:
                    self.queue.appendleft(held.popleft())
                    if not held:
                        del self._held[key]
                    self._ready.set()

    async def deliver(self, d: Delivery) -> bool:
        t = d.target
        headers = {"Content-Type": "application/json", "User-Agent": "aether-alerts/1", **t.headers}
        if t.secret:
            sig = hmac.new(t.secret.encode(), d.body, hashlib.sha256).hexdigest()
            headers["X-Aether-Signature"] = f"sha256={sig}"
        delay = t.backoff_initial_s
        for attempt in range(1, t.max_attempts + 1):
            self.m_attempts.inc()
            retry_after: float | None = None
            try:
                r = await self.client.post(t.url, content=d.body, headers=headers, timeout=t.timeout_s)
                if 200 <= r.status_code < 300:
                    self.m_deliveries.labels("delivered").inc()
                    return True
                outcome = f"HTTP {r.status_code}"
                if r.status_code not in RETRY_STATUS:
                    break  # the receiver refuses this body: sending it again will not change its mind
                retry_after = _retry_after(r)
            except httpx.HTTPError as exc:
                outcome = exc.__class__.__name__
            if attempt < t.max_attempts:
                wait = min(t.backoff_max_s, retry_after if retry_after is not None else delay * random.uniform(0.8, 1.2))
                log.info("webhook attempt failed, retrying", extra={
                    "target": _where(t.url), "attempt": attempt, "outcome": outcome, "retry_in_s": round(wait, 2),
                    "alert_id": d.alert_id, "event": d.event})
                await asyncio.sleep(wait)
                delay = min(t.backoff_max_s, delay * 2)
        self.m_deliveries.labels("failed").inc()
        log.warning("webhook delivery failed", extra={"target": _where(t.url), "outcome": outcome,
                                                      "attempts": attempt, "alert_id": d.alert_id, "event": d.event})
        return False


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
