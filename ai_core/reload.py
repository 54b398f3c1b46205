"""Hot reload: the model being served, swapped atomically when `aether.model.updated` names a new version."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ai_core.errors import AiCoreError
from ai_core.metrics import AiCoreMetrics
from ai_core.model import PlacementModel
from ai_core.registry import Registry
from services import bus, subjects
from services.errors import MalformedMessage
from services.schemas.placement import ModelUpdated

log = logging.getLogger("aether.ai_core.reload")


class ModelHolder:
    """Holds the served model. Readers take `holder.model` once per request (one reference read), so a
    swap never mixes two versions within a decision."""

    def __init__(self, registry: Registry, metrics: AiCoreMetrics, *, threads: int = 1) -> None:
        self.registry = registry
        self.metrics = metrics
        self.threads = threads
        self.model: PlacementModel | None = None
        self.loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def load(self, version: str | None = None, *, reason: str = "request") -> PlacementModel | None:
        """Load `version` (default: the registry's active one) off the event loop and switch to it. On
        failure the model being served stays, and the error is logged and counted."""
        async with self._lock:
            try:
                model = await asyncio.to_thread(self._load_sync, version)
            except AiCoreError as exc:
                self.metrics.reloads.labels(result="failed").inc()
                log.error("model load failed", extra={"version": version, "reason": reason, "error": exc.message,
                                                      "serving": self.model.version if self.model else None})
                return None
            if model is None:
                return None
            previous = self.model.version if self.model else None
            self.model = model
            self.loaded_at = time.time()
            self.metrics.served(model.version)
            self.metrics.model_loaded_at.set(self.loaded_at)
            self.metrics.reloads.labels(result="ok").inc()
            log.info("model loaded", extra={"version": model.version, "previous": previous, "reason": reason})
            return model

    def _load_sync(self, version: str | None) -> PlacementModel | None:
        if version is None and self.registry.active() is None:
            log.warning("no placement model in the registry: /v1/place answers NO_MODEL until one is trained",
                        extra={"model_dir": str(self.registry.root)})
            return None
        model = self.registry.load(version)
        model.set_threads(self.threads)
        return model

    def describe(self) -> dict[str, Any]:
        m = self.model
        if m is None:
            return {"loaded": False, "version": None, "available_versions": self.registry.versions()[-20:]}
        meta = m.meta
        return {"loaded": True, "version": m.version, "created_at": meta.get("created_at"),
                "loaded_at": self.loaded_at, "source": meta.get("source"), "rows": meta.get("rows"),
                "metrics": meta.get("metrics", {}), "training": meta.get("training", {}),
                "features": meta.get("features", []), "available_versions": self.registry.versions()[-20:]}


class ModelUpdates:
    """Subscribes to `aether.model.updated` and reloads; keeps (re)connecting while NATS is away."""

    def __init__(self, holder: ModelHolder, metrics: AiCoreMetrics, *, url: str, user: str | None = None,
                 password: str | None = None) -> None:
        self.holder = holder
        self.metrics = metrics
        self.url, self.user, self.password = url, user, password
        self.nc = None
        self.subscribed = False
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return bool(self.subscribed and self.nc is not None and self.nc.is_connected)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-updates")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.nc is not None:
            try:
                await self.nc.drain()
            except Exception:  # closing on shutdown: nothing left to protect
                pass

    async def _run(self) -> None:
        delay = 0.5
        while self.nc is None:
            try:
                nc = await bus.connect(self.url, name="aether-ai-core", user=self.user, password=self.password,
                                       connect_timeout=2.0)
            except Exception as exc:  # first connection: retry forever, serving meanwhile
                log.warning("nats not reachable; retrying", extra={"url": self.url, "error": repr(exc),
                                                                   "retry_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.nc = nc
        await self.nc.subscribe(subjects.MODEL_UPDATED, cb=self._on_message)
        await self.nc.flush()
        self.subscribed = True
        log.info("listening for model updates", extra={"subject": subjects.MODEL_UPDATED})
        while True:  # keep the gauge honest across disconnects
            self.metrics.nats_connected.set(1 if self.connected else 0)
            await asyncio.sleep(1.0)

    async def _on_message(self, msg) -> None:
        try:
            update = bus.decode(ModelUpdated, msg.data, msg.subject)
        except MalformedMessage as exc:
            self.metrics.malformed.inc()
            log.warning("malformed model update dead-lettered", extra={"error": exc.message})
            await bus.dead_letter(self.nc, "model", msg.subject, msg.data, exc.message)
            return
        current = self.holder.model.version if self.holder.model else None
        if update.version == current:
            return
        await self.holder.load(update.version, reason="model.updated")
