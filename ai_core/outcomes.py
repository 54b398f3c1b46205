"""Recorded outcomes as training rows, and model versions in the database.

A row per GPU of each job's last placement whose job SUCCEEDED: the features the decision was made on
(`placements.job_features`, `placements.chosen_state`) and the attempt's actual run time
(`jobs.finished_at - jobs.started_at`), as log(run time / max_duration_s) like the synthetic rows.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import asyncpg
import numpy as np
from pydantic import ValidationError

from ai_core import features as F
from ai_core.dataset import Dataset
from services.schemas.placement import Candidate, JobFeatures

log = logging.getLogger("aether.ai_core.outcomes")

OUTCOMES_SQL = """
SELECT DISTINCT ON (p.job_id)
       p.job_id, p.time, p.job_features, p.chosen_state, j.max_duration_s,
       EXTRACT(EPOCH FROM (j.finished_at - j.started_at)) AS run_s
FROM placements p
JOIN jobs j ON j.id = p.job_id
WHERE j.state = 'SUCCEEDED' AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL
  AND p.job_features IS NOT NULL AND p.chosen_state IS NOT NULL
  AND p.time >= now() - make_interval(days => $1)
ORDER BY p.job_id, p.time DESC
"""


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def rows_from_records(records: list[Any]) -> tuple[Dataset, int]:
    """Training rows from outcome records (mappings with the OUTCOMES_SQL columns); returns (rows, skipped)."""
    xs: list[np.ndarray] = []
    ys: list[float] = []
    gs: list[int] = []
    skipped = 0
    day0 = None
    for r in records:
        try:
            job = JobFeatures.model_validate(_json(r["job_features"]))
            chosen = [Candidate.model_validate(c) for c in _json(r["chosen_state"]) or []]
        except (ValidationError, TypeError, ValueError):
            skipped += 1
            continue
        run_s = float(r["run_s"] or 0.0)
        if not chosen or run_s <= 0 or not math.isfinite(run_s):
            skipped += 1
            continue
        if job.max_duration_s is None and r["max_duration_s"]:
            job = job.model_copy(update={"max_duration_s": float(r["max_duration_s"])})
        ref = F.job_max_duration_s(job)
        x = F.matrix(job, F.table_from_candidates(chosen).num)
        xs.append(x)
        ys.extend([math.log(max(run_s, 1.0) / ref)] * len(x))
        day = int(r["time"].timestamp() // 86400) if r["time"] is not None else 0
        day0 = day if day0 is None else min(day0, day)
        gs.extend([day] * len(x))
    if not xs:
        return Dataset.concat([]), skipped
    groups = np.asarray(gs, dtype=np.int64) - (day0 or 0)
    return Dataset(np.concatenate(xs).astype(np.float32), np.asarray(ys, dtype=np.float32), groups,
                   {"db_rows": int(len(ys)), "db_jobs": len(xs)}), skipped


async def load_outcomes(dsn: str, *, days: int = 90) -> tuple[Dataset, int]:
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(OUTCOMES_SQL, days)
    finally:
        await conn.close()
    return rows_from_records(records)


async def store_version(dsn: str, meta: dict[str, Any], path: str, *, activated: bool) -> None:
    """Insert the model_versions row (metrics kept as JSON)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO model_versions (version, created_at, source, rows, metrics, training, feature_schema, path,
                                           sha256, activated)
               VALUES ($1, $2::text::timestamptz, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10)
               ON CONFLICT (version) DO NOTHING""",
            meta["version"], meta["created_at"], meta["source"], int(meta["rows"]),
            json.dumps(meta.get("metrics", {}), default=str), json.dumps(meta.get("training", {}), default=str),
            meta["feature_schema"], path, meta.get("sha256"), activated)
    finally:
        await conn.close()
