"""Energy and emissions in SQL, next to the data: consecutive samples of a GPU make segments whose energy is the
energy counter's increase (NVML's total energy, when both ends have it) or else the trapezoid of power; segments
are clipped to the range (and to a job's run), weighted by the carbon intensity at their midpoint, and summed.

Over long ranges the 1-minute rollup `gpu_samples_1m` gives one segment per GPU and minute instead: the counter's
increase from the previous minute, or the mean power times the time the minute's samples cover.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

J_PER_KWH = 3.6e6

# Times are Unix seconds in float8 from here on: interval and numeric arithmetic per row costs several times more.
# $1 from, $2 to (timestamptz), $3 max gap (s), $4 GPU filter (text[] or NULL)
BOUNDS = """
bounds AS (SELECT date_part('epoch', $1::timestamptz) AS fs, date_part('epoch', $2::timestamptz) AS ts)"""

RAW_SEGMENTS = """
raw AS (
    SELECT gpu_uuid, node, date_part('epoch', time) AS t1, lead(date_part('epoch', time)) OVER w AS t2,
           power_w::float8 AS p1, lead(power_w::float8) OVER w AS p2, energy_mj AS e1, lead(energy_mj) OVER w AS e2
    FROM gpu_samples
    WHERE time >= $1::timestamptz - make_interval(secs => $3) AND time < $2::timestamptz + make_interval(secs => $3)
      AND ($4::text[] IS NULL OR gpu_uuid = ANY($4::text[]))
    WINDOW w AS (PARTITION BY gpu_uuid ORDER BY time)
),
seg AS (
    SELECT gpu_uuid, node, t1, t2,
           CASE WHEN e2 >= e1 THEN (e2 - e1) / 1000.0
                WHEN p1 IS NOT NULL AND p2 IS NOT NULL THEN (p1 + p2) / 2.0 * (t2 - t1)
           END AS joules
    FROM raw, bounds
    WHERE t2 > t1 AND t2 - t1 <= $3::float8 AND t2 > bounds.fs AND t1 < bounds.ts
)"""

ROLLUP_SEGMENTS = """
r AS (
    SELECT gpu_uuid, node, date_part('epoch', bucket) AS t1, n, power_w_avg, energy_mj_max AS e,
           lag(energy_mj_max) OVER w AS prev_e, date_part('epoch', lag(bucket) OVER w) AS prev_t
    FROM gpu_samples_1m
    WHERE bucket >= $1::timestamptz - INTERVAL '2 minutes' AND bucket < $2::timestamptz
      AND ($4::text[] IS NULL OR gpu_uuid = ANY($4::text[]))
    WINDOW w AS (PARTITION BY gpu_uuid ORDER BY bucket)
),
seg AS (
    SELECT r.gpu_uuid, r.node, r.t1, r.t1 + 60.0 AS t2,
           CASE WHEN r.prev_t = r.t1 - 60.0 AND r.e >= r.prev_e THEN (r.e - r.prev_e) / 1000.0
                WHEN r.power_w_avg IS NOT NULL
                    THEN r.power_w_avg * least(60.0, r.n * coalesce(nd.interval_s, 1.0))
           END AS joules
    FROM r LEFT JOIN nodes nd ON nd.name = r.node, bounds
    WHERE r.t1 + 60.0 > bounds.fs AND r.t1 < bounds.ts AND ($3::float8 IS NOT NULL)
)"""

# Segments clipped to [from, to]; energy spread evenly over a segment (segments are seconds, or a minute, long).
CLIPPED = """
clip AS (
    SELECT gpu_uuid, node, greatest(t1, fs) AS a, least(t2, ts) AS b,
           joules * (least(t2, ts) - greatest(t1, fs)) / (t2 - t1) AS j, t1
    FROM seg, bounds WHERE joules IS NOT NULL
)"""

# $5 intensity step starts (float8[] of Unix seconds, the first far in the past), $6 their values (float8[])
INTENSITY = "($6::float8[])[greatest(1, width_bucket((a + b) / 2.0, $5::float8[]))]"

# Jobs that ran on GPUs in the range: one row per (job, GPU) of its current attempt; $7 job ids (or NULL).
JOBS = """
jobs_g AS (
    SELECT j.id AS job_id, j.tenant, g->>'uuid' AS gpu_uuid, date_part('epoch', j.started_at) AS js,
           date_part('epoch', coalesce(j.finished_at, now())) AS je
    FROM jobs j, jsonb_array_elements(coalesce(j.assignment, '[]'::jsonb)) AS g
    WHERE j.started_at IS NOT NULL AND j.started_at < $2 AND coalesce(j.finished_at, now()) > $1
      AND ($7::text[] IS NULL OR j.id = ANY($7::text[]))
),
attributed AS (
    SELECT jg.job_id, jg.tenant, c.gpu_uuid, c.node, greatest(c.a, jg.js) AS a, least(c.b, jg.je) AS b,
           c.j * (least(c.b, jg.je) - greatest(c.a, jg.js)) / nullif(c.b - c.a, 0)
               -- a GPU shared by several jobs splits its energy evenly between them
               / count(*) OVER (PARTITION BY c.gpu_uuid, c.t1) AS j
    FROM clip c JOIN jobs_g jg ON jg.gpu_uuid = c.gpu_uuid AND jg.js < c.b AND jg.je > c.a
)"""

GROUPS = {
    "gpu": ("gpu_uuid AS key, node", "gpu_uuid, node", "clip"),
    "cluster": ("'cluster' AS key, NULL::text AS node", "", "clip"),
    "job": ("job_id AS key, node", "job_id, node", "attributed"),
    "tenant": ("tenant AS key, NULL::text AS node", "tenant", "attributed"),
}


def build(by: str, source: str, bucket_s: float | None = None) -> str:
    """SQL for totals grouped `by` (gpu, cluster, job, tenant), from `source` (raw, rollup); with `bucket_s`
    also grouped by time bucket (a series), a segment going to the bucket of its midpoint."""
    select, group, rel = GROUPS[by]
    segments = RAW_SEGMENTS if source == "raw" else ROLLUP_SEGMENTS
    ctes = [BOUNDS, segments, CLIPPED] + ([JOBS] if rel == "attributed" else [])
    if bucket_s:
        step = float(bucket_s)
        select = f"to_timestamp(floor((a + b) / 2.0 / {step!r}) * {step!r}) AS bucket, {select}"
        group = "bucket" + (f", {group}" if group else "")
    body = (f"SELECT {select}, sum(j) AS joules, sum(j * {INTENSITY}) / {J_PER_KWH} AS grams, "
            f"sum(b - a) AS covered_s FROM {rel} WHERE b > a"
            + (f" GROUP BY {group}" if group else "")
            + (" ORDER BY bucket" if bucket_s else ""))
    return "WITH " + ",".join(ctes) + "\n" + body


async def totals(conn: asyncpg.Connection, *, by: str, source: str, start: datetime, end: datetime, max_gap_s: float,
                 thresholds: list[float], intensities: list[float], gpus: list[str] | None = None,
                 jobs: list[str] | None = None, bucket_s: float | None = None) -> list[asyncpg.Record]:
    sql = build(by, source, bucket_s)
    args: list = [start, end, max_gap_s, gpus, thresholds, intensities]
    if by in ("job", "tenant"):
        args.append(jobs)
    return await conn.fetch(sql, *args)
