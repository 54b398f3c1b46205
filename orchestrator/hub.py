"""Fan-out of live events to WebSocket clients: each client has a bounded queue, so a slow one never slows others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

log = logging.getLogger("aether.hub")


class Client:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize)
        self.dropped = False
        self.dropped_event = asyncio.Event()  # lets a sender blocked mid-send notice the drop at once
        self.topics: set[str] = set()  # optional subscriptions, e.g. "job:<id>" for one job's logs
        self.principal: Any = None  # orchestrator.auth.Principal; None: sees everything (tests, internal use)

    def sees_tenant(self, tenant: str | None) -> bool:
        return self.principal is None or self.principal.sees_tenant(tenant)


class Hub:
    """`publish` serialises an event once and offers it to every client; a client whose queue is full is
    dropped (it reconnects and gets a fresh snapshot) instead of making everyone wait."""

    def __init__(self, client_queue: int = 256) -> None:
        self.client_queue = client_queue
        self.clients: set[Client] = set()
        self.snapshot_parts: dict[str, Callable[[], Awaitable[Any]]] = {}
        # Parts that depend on who asks (e.g. jobs, by tenant): called with the client's principal.
        self.scoped_parts: dict[str, Callable[[Any], Awaitable[Any]]] = {}
        self.sent = 0
        self.dropped_clients = 0

    def connect(self) -> Client:
        client = Client(self.client_queue)
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def publish(self, event: dict[str, Any], topic: str | None = None, tenant: str | None = None) -> None:
        """`topic`: only clients subscribed to it; `tenant`: only clients whose token sees that tenant (a job's
        events never reach another tenant's dashboard)."""
        if not self.clients:
            return
        data = orjson.dumps(event, default=str)
        for client in list(self.clients):
            if topic is not None and topic not in client.topics:
                continue
            if tenant is not None and not client.sees_tenant(tenant):
                continue
            try:
                client.queue.put_nowait(data)
                self.sent += 1
            except asyncio.QueueFull:
                self._drop(client)

    def _drop(self, client: Client) -> None:
        client.dropped = True
        client.dropped_event.set()
        self.clients.discard(client)
        self.dropped_clients += 1
        # Wake the sender so it notices and closes the socket.
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(None)
        log.warning("websocket client fell behind and was dropped")

    async def snapshot(self, principal: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "snapshot"}
        for name, part in self.snapshot_parts.items():
            out[name] = await part()
        for name, scoped in self.scoped_parts.items():
            out[name] = await scoped(principal)
        return out
