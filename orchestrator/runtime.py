"""What every orchestrator component shares at run time: settings, bus, database pool, cluster model, hub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from orchestrator.auth import Authenticator
from orchestrator.cluster import Cluster
from orchestrator.errors import DatabaseUnavailable
from orchestrator.hub import Hub
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("aether.runtime")


@dataclass
class Runtime:
    settings: OrchestratorSettings
    nc: NATS
    js: JetStreamContext
    pool: asyncpg.Pool
    http: httpx.AsyncClient
    cluster: Cluster
    hub: Hub
    metrics: OrchestratorMetrics
    auth: Authenticator
    db_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # The hot loops' transactions (orchestrator/jobs/db.py `transaction`): a pool without the reset round trip.
    tx_pool: asyncpg.Pool | None = None
    storage: str = "unknown"
    tasks: list[asyncio.Task] = field(default_factory=list)
    # Components keep their objects here by name (e.g. "jobs", "alerts"), so others can find them.
    components: dict[str, Any] = field(default_factory=dict)
    # Called with the node name when a node stops heartbeating / comes back.
    on_node_down: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    on_node_up: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        """Run a background loop; if it dies unexpectedly, say so loudly (a silent dead loop is the worst bug)."""
        task = asyncio.create_task(coro, name=name)

        def done(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("background task died", extra={"task": name}, exc_info=t.exception())

        task.add_done_callback(done)
        self.tasks.append(task)
        return task

    def db(self):
        """Acquire a connection, translating 'database is down' into the typed 503 error."""
        return _Acquire(self.pool)


class _Acquire:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.ctx = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self.ctx = self.pool.acquire(timeout=5)
            return await self.ctx.__aenter__()
        except (TimeoutError, OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc

    async def __aexit__(self, *exc_info) -> None:
        if self.ctx is not None:
            await self.ctx.__aexit__(*exc_info)


DB_DOWN_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                  asyncpg.InterfaceError, asyncio.TimeoutError, ConnectionError, DatabaseUnavailable)
