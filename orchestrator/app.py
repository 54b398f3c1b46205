"""Builds the orchestrator: connects NATS and PostgreSQL, applies migrations, starts every component, serves HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from contextlib import asynccontextmanager

import asyncpg
import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from orchestrator import dcgm, heartbeats, ingest, partitions
from orchestrator import jobs as jobs_component
from orchestrator.alerts import service as alerts
from orchestrator.api import alerts as alerts_api
from orchestrator.api import carbon as carbon_api
from orchestrator.api import jobs as jobs_api
from orchestrator.api import system, ws
from orchestrator.api import telemetry as telemetry_api
from orchestrator.auth import Authenticator
from orchestrator.carbon import service as carbon
from orchestrator.cluster import Cluster
from orchestrator.hub import Hub
from orchestrator.jobs import db as jobs_db
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.migrate import apply_migrations, storage_flavour
from orchestrator.runtime import DB_DOWN_ERRORS, Runtime
from orchestrator.settings import OrchestratorSettings
from services import bus
from services.http import install_error_handlers

log = logging.getLogger("aether.orchestrator")

# Each component module has `async def start(rt)`; routers are listed in ROUTERS. Order matters only in
# that the database bootstrap runs in the background and components wait for `rt.db_ready` themselves.
COMPONENTS = [heartbeats, ingest, ws, alerts, carbon, partitions, dcgm, jobs_component]
ROUTERS = [system.router, ws.router, alerts_api.router, carbon_api.router, telemetry_api.router, jobs_api.router]


async def _bootstrap_db(rt: Runtime) -> None:
    """Migrate and mark the database ready, retrying while PostgreSQL is not up yet."""
    delay = 0.5
    while True:
        try:
            if rt.settings.auto_migrate:
                applied = await apply_migrations(rt.settings.database_url)
                if applied:
                    log.info("migrations applied", extra={"applied": applied})
            async with rt.db() as conn:
                rt.storage = await storage_flavour(conn)
            rt.db_ready.set()
            log.info("database ready", extra={"storage": rt.storage})
            return
        except DB_DOWN_ERRORS as exc:
            log.warning("database not reachable yet", extra={"error": repr(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        except Exception:
            # A migration that fails for a reason other than an absent database will not fix itself:
            # stop the process so the supervisor shows it, rather than serve half a service.
            log.critical("database bootstrap failed; stopping", exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def create_app(settings: OrchestratorSettings | None = None) -> FastAPI:
    settings = settings or OrchestratorSettings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = await bus.connect(settings.nats_url, name=f"orchestrator-{settings.instance_id or 'main'}",
                               user=settings.nats_user, password=settings.nats_password)
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=16,
                                         max_inactive_connection_lifetime=60, command_timeout=30)
        tx_pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=8, reset=jobs_db.keep_session,
                                            max_inactive_connection_lifetime=60, command_timeout=30)
        rt = Runtime(settings=settings, nc=nc, js=nc.jetstream(), pool=pool, tx_pool=tx_pool,
                     http=httpx.AsyncClient(timeout=5.0), cluster=Cluster(settings.sample_stale_s),
                     hub=Hub(settings.ws_client_queue), metrics=OrchestratorMetrics(),
                     auth=Authenticator(settings))
        app.state.rt = rt
        rt.spawn(_bootstrap_db(rt), "db-bootstrap")
        for component in COMPONENTS:
            await component.start(rt)
        log.info("orchestrator started", extra={"port": settings.port, "nats": settings.nats_url})
        try:
            yield
        finally:
            for task in rt.tasks:
                task.cancel()
            for task in rt.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await nc.drain()
            await rt.http.aclose()
            await tx_pool.close()
            await pool.close()

    app = FastAPI(title="Aether orchestrator", version="1", lifespan=lifespan)
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                       allow_headers=["*"])
    install_error_handlers(app, validation_code="INVALID_JOB")
    for router in ROUTERS:
        app.include_router(router)
    return app
