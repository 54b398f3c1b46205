"""Fixtures of the ingest tests: orchestrator processes started on demand (logs in test-output/), a plain
PostgreSQL (no TimescaleDB) shared by the module that asks for it."""

from __future__ import annotations

import itertools

import pytest

from services.localstack import Postgres
from tests.support.procs import Service, orchestrator


@pytest.fixture
def start_orch(output_dir):
    """start_orch(nats_url, dsn, **settings) -> a running orchestrator; settings become env vars (UPPER_CASE)."""
    started: list[Service] = []
    numbers = itertools.count()  # next() is atomic: tests may start two at once from threads

    def start(nats_url: str, dsn: str, **settings) -> Service:
        env = {k.upper(): str(v) for k, v in settings.items()}
        log_path = output_dir / f"orchestrator-{next(numbers)}.log"
        log_path.unlink(missing_ok=True)  # a previous run's lines would confuse a test that reads the log
        svc = orchestrator(nats_url, dsn, extra_env=env, log_path=log_path)
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture(scope="session")
def plain_pg():
    """PostgreSQL without TimescaleDB preloaded: migrations take the plain path (partitions, date_bin, rollup)."""
    server = Postgres(timescale=False).start()
    yield server
    server.cleanup()
