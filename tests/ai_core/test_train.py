"""Training from recorded outcomes (placements + jobs tables) writes a versioned model and its database row."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from ai_core import train
from ai_core.registry import Registry
from orchestrator.migrate import apply_migrations
from orchestrator.placement import Placer
from tests.ai_core.conftest import gpu, job

N_JOBS = 80


async def _record_outcomes(database_url: str) -> None:
    """Jobs that ran on a busy or an idle GPU, with run times to match, as the orchestrator records them."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    placer = Placer(base_url="http://127.0.0.1:9", pool=pool)
    rng = np.random.default_rng(1)
    now = datetime.now(UTC)
    try:
        for i in range(N_JOBS):
            busy = i % 2 == 0
            cand = gpu(i % 8, "n1", util_gpu_pct=90 if busy else 0, jobs_running=1 if busy else 0,
                       job_types=["training"] if busy else [], mem_free_mb=50000)
            j = job(gpu_mem_mb=10000, max_duration_s=3600)
            run_s = (2400 if busy else 1200) * rng.uniform(0.9, 1.1)
            jid = f"job-{i}"
            await pool.execute(
                """INSERT INTO jobs (id, name, tenant, spec, job_type, gpus, gpu_mem_mb, max_duration_s, state,
                                     submitted_at, started_at, finished_at, state_since)
                   VALUES ($1, $1, 't', '{}', 'inference', 1, 10000, 3600, 'SUCCEEDED', $2, $2, $3, $3)""",
                jid, now - timedelta(seconds=run_s + 10), now - timedelta(seconds=10))
            d = await placer.place(jid, j, [cand])  # no AI core here: heuristic, still recorded with features
            await placer.record(pool, d, publish=False)
        # A job that did not succeed teaches nothing about run time and is left out.
        await pool.execute("""INSERT INTO jobs (id, name, tenant, spec, job_type, gpus, gpu_mem_mb, max_duration_s,
                                                state, submitted_at, state_since)
                              VALUES ('job-failed', 'x', 't', '{}', 'batch', 1, 1, 60, 'FAILED', now(), now())""")
    finally:
        await placer.aclose()
        await pool.close()


async def test_train_from_db_writes_version_and_row(database_url, tmp_path, capsys):
    await apply_migrations(database_url)
    await _record_outcomes(database_url)
    model_dir = tmp_path / "models"
    rc = await _run_train(["--from-db", "--database-url", database_url, "--model-dir", str(model_dir),
                           "--min-db-rows", "50", "--no-check", "--no-notify"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reg = Registry(model_dir)
    assert reg.active() == summary["version"] and summary["source"] == "db" and summary["rows"] == N_JOBS
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM model_versions WHERE version = $1", summary["version"])
    finally:
        await conn.close()
    assert row["source"] == "db" and row["rows"] == N_JOBS and row["activated"]
    assert "valid_rmse_log" in json.loads(row["metrics"])
    # What it learnt from the outcomes: the busy GPU is predicted slower than the idle one.
    model = reg.load()
    from ai_core import features as F
    busy = gpu(0, util_gpu_pct=90, jobs_running=1, job_types=["training"], mem_free_mb=50000)
    idle = gpu(1, mem_free_mb=50000)
    pred = model.predict_log(F.matrix(job(gpu_mem_mb=10000, max_duration_s=3600),
                                      F.table_from_candidates([busy, idle]).num))
    assert pred[0] > pred[1]


async def _run_train(argv: list[str]) -> int:
    # main() drives its own event loop (asyncio.run): give it a thread of its own.
    return await asyncio.to_thread(train.main, argv, configure_logging=False)
