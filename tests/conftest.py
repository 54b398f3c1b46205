"""Shared fixtures: a real nats-server per test, one real PostgreSQL per session with a fresh database per test."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from services.localstack import NatsServer, Postgres, timescaledb_available

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def nats_server():
    """A nats-server with JetStream in a temporary store, on a random loopback port; stopped after the test."""
    server = NatsServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL cluster for the session (TimescaleDB preloaded when installed)."""
    server = Postgres().start()
    yield server
    server.cleanup()


@pytest.fixture
def database_url(pg_server, request) -> str:
    """A fresh database for this test; its DSN."""
    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    return pg_server.create_database(name)


@pytest.fixture
def unique_node(request) -> str:
    """A node name of this test's own so subjects never collide between tests."""
    return "n" + uuid.uuid4().hex[:10]


@pytest.fixture
def output_dir(request) -> Path:
    """Where a test leaves artefacts (screenshots, logs): test-output/<test name>/."""
    path = ROOT / "test-output" / re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.nodeid)[-120:]
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_collection_modifyitems(config, items):
    # Only the TimescaleDB-specific tests may be skipped, and only on a machine that has no TimescaleDB to install:
    # with ../shared/timescaledb beside the checkout, a missing extension is a broken install, not a reason to skip.
    if timescaledb_available():
        return
    if (ROOT.parent / "shared" / "timescaledb").is_dir():
        raise pytest.UsageError("../shared/timescaledb is there but the timescaledb extension is not installed: "
                                "run ./setup.sh (or .ci/run) first")
    skip = pytest.mark.skip(reason="timescaledb extension not installed (../shared/timescaledb absent)")
    for item in items:
        if "timescale" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("AETHER_CREDENTIALS", str(ROOT / "tests" / "no-credentials.env"))
