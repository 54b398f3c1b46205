"""Fixtures of the jobs tests: one orchestrator per module (its own NATS and database), a NATS client per test."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import nats
import pytest

from services.localstack import NatsServer
from tests.jobs.support import start_orchestrator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(pg_server, request):
    """NATS, a fresh database and an orchestrator shared by the tests of one module (each test uses its own
    node names and tenants' jobs, so they do not depend on each other)."""
    logs = ROOT / "test-output" / re.sub(r"[^A-Za-z0-9_.-]", "_", request.module.__name__)
    logs.mkdir(parents=True, exist_ok=True)
    ns = NatsServer().start()
    dsn = pg_server.create_database("jobs_" + uuid.uuid4().hex[:10])
    orch = start_orchestrator(ns.url, dsn, logs, **getattr(request.module, "ORCHESTRATOR_ENV", {}))
    yield {"nats": ns, "dsn": dsn, "orch": orch, "logs": logs}
    orch.stop()
    ns.cleanup()


@pytest.fixture
async def nc(stack):
    conn = await nats.connect(stack["nats"].url)
    yield conn
    await conn.close()


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack["orch"].url, timeout=10) as c:
        yield c
