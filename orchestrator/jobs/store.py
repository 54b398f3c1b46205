"""SQL of the jobs tables: insert, lock-and-update, events, logs, listing, retention. Every statement lives here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator.jobs.model import Job
from orchestrator.jobs.states import Applied
from services.schemas import JobState

ACTIVE = ["PENDING", "SCHEDULED", "RUNNING"]

EVENT_COLUMNS = ("job_id", "attempt", "from_state", "to_state", "time", "duration_s", "source", "node", "reason")
LOG_COLUMNS = ("job_id", "attempt", "seq", "stream", "line", "time")


def _insert_events(first: int, only_if: str = "TRUE") -> str:
    """Append events (row i of each array is one), in the order given: their ids are a job's history's order.
    Parameters $first.. on, after those of the statement it ends; `only_if`, a condition on each."""
    p = [f"${i}" for i in range(first, first + len(EVENT_COLUMNS))]
    return f"""
INSERT INTO job_events (job_id, attempt, from_state, to_state, time, duration_s, source, node, reason)
SELECT job_id, attempt, from_state, to_state, time, duration_s, source, node, reason
FROM unnest({p[0]}::text[], {p[1]}::int[], {p[2]}::text[], {p[3]}::text[], {p[4]}::timestamptz[], {p[5]}::float8[],
            {p[6]}::text[], {p[7]}::text[], {p[8]}::text[]) WITH ORDINALITY
    AS e(job_id, attempt, from_state, to_state, time, duration_s, source, node, reason, n)
WHERE {only_if}
ORDER BY n
"""


# New jobs (whole rows: a job placed as it is stored goes in SCHEDULED) and their events, in one statement (row i of
# each array is one job).
_INSERT_JOBS = """
WITH inserted AS (
INSERT INTO jobs (id, name, tenant, submitted_by, idempotency_key, spec, job_type, model, priority, gpus, gpu_mem_mb,
                  max_duration_s, submitted_at, state, attempt, lost_count, node, assignment, placement, exit_code,
                  result, error, reason, pid, cancel_requested_at, scheduled_at, started_at, finished_at, state_since)
SELECT id, name, tenant, submitted_by, idempotency_key, spec::jsonb, job_type, model, priority, gpus, gpu_mem_mb,
       max_duration_s, submitted_at, state, attempt, lost_count, node, assignment::jsonb, placement::jsonb, exit_code,
       result::jsonb, error, reason, pid, cancel_requested_at, scheduled_at, started_at, finished_at, state_since
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int[],
            $10::int[], $11::int[], $12::int[], $13::timestamptz[], $14::text[], $15::int[], $16::int[], $17::text[],
            $18::text[], $19::text[], $20::int[], $21::text[], $22::text[], $23::text[], $24::int[],
            $25::timestamptz[], $26::timestamptz[], $27::timestamptz[], $28::timestamptz[], $29::timestamptz[])
    AS u(id, name, tenant, submitted_by, idempotency_key, spec, job_type, model, priority, gpus, gpu_mem_mb,
         max_duration_s, submitted_at, state, attempt, lost_count, node, assignment, placement, exit_code, result,
         error, reason, pid, cancel_requested_at, scheduled_at, started_at, finished_at, state_since)
)"""
INSERT_JOBS = _INSERT_JOBS + _insert_events(30)

# Every changed job of a transaction in ONE statement (row i of each array is one job), with the transitions'
# events: a burst of reports or placements updates hundreds of rows, and one statement costs the server one plan
# and one pass, where a batch of single-row UPDATEs costs it hundreds - and the transaction one round trip, where
# an UPDATE and a COPY cost three. JSON columns travel as text and are cast here.
_JOB_SET = """state = u.state, attempt = u.attempt, lost_count = u.lost_count, node = u.node,
    assignment = u.assignment::jsonb, placement = u.placement::jsonb, exit_code = u.exit_code,
    result = u.result::jsonb, error = u.error, reason = u.reason, pid = u.pid,
    cancel_requested_at = u.cancel_requested_at, scheduled_at = u.scheduled_at, started_at = u.started_at,
    finished_at = u.finished_at, state_since = u.state_since, updated_at = now()"""
_JOB_ARRAYS = """$1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[], $8::int[], $9::text[],
            $10::text[], $11::text[], $12::int[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
            $16::timestamptz[], $17::timestamptz[]"""
_JOB_NAMES = """id, state, attempt, lost_count, node, assignment, placement, exit_code, result, error, reason, pid,
         cancel_requested_at, scheduled_at, started_at, finished_at, state_since"""
_UPDATE = f"""
UPDATE jobs AS j SET {_JOB_SET}
FROM unnest({_JOB_ARRAYS})
    AS u({_JOB_NAMES})
WHERE j.id = u.id
"""
UPDATE_JOBS = f"WITH changed AS ({_UPDATE})" + _insert_events(18)


def _insert_logs(first: int, only_if: str = "TRUE") -> str:
    """Store log lines of known jobs (row i of each array is one); a redelivered line (same job, attempt, seq) is
    stored once. Parameters $first.. on; `only_if`, a condition for storing any."""
    p = [f"${i}" for i in range(first, first + len(LOG_COLUMNS))]
    return (f"INSERT INTO job_logs (job_id, attempt, seq, stream, line, time) SELECT u.* FROM unnest({p[0]}::text[], "
            f"{p[1]}::int[], {p[2]}::int[], {p[3]}::text[], {p[4]}::text[], {p[5]}::timestamptz[]) "
            "AS u(job_id, attempt, seq, stream, line, time) WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.job_id) "
            f"AND {only_if} ON CONFLICT DO NOTHING")


INSERT_LOGS = _insert_logs(1)
# A report batch's transitions and its log lines, in one statement (one round trip, not two).
UPDATE_JOBS_AND_LOGS = f"WITH changed AS ({_UPDATE}), logged AS ({_insert_logs(27)})" + _insert_events(18)

# Transitions decided on the scheduler leader's copies of the jobs, written in ONE statement that is its own
# transaction (one round trip, commit included): a job's row is updated only if it is still what the copy says
# (state, attempt, since when, cancel request), and only when the lease `fence` condition holds; its events go in
# only if it was updated. Returns whether the fence held and the ids updated.
@functools.lru_cache(maxsize=4)  # (the fence is the same while the lease is held)
def _update_if_unchanged(fence: str) -> str:
    return f"""
WITH fence AS (SELECT ({fence}) AS held),
changed AS (
UPDATE jobs AS j SET {_JOB_SET}
FROM unnest({_JOB_ARRAYS}, $18::text[], $19::int[], $20::timestamptz[], $21::timestamptz[])
    AS u({_JOB_NAMES}, was_state, was_attempt, was_since, was_cancel)
WHERE j.id = u.id AND (SELECT held FROM fence) AND j.state = u.was_state AND j.attempt = u.was_attempt
    AND j.state_since IS NOT DISTINCT FROM u.was_since AND j.cancel_requested_at IS NOT DISTINCT FROM u.was_cancel
RETURNING j.id),
events AS ({_insert_events(22, "job_id IN (SELECT id FROM changed)")}),
logged AS ({_insert_logs(31, "(SELECT held FROM fence)")})
SELECT (SELECT held FROM fence) AS held, ARRAY(SELECT id FROM changed) AS changed"""


# What admission decides on, in one round trip: per tenant (unfinished jobs, GPUs they ask for, how many PENDING),
# and the ids of jobs already submitted with the batch's idempotency keys (a retry: rare, then read whole). First
# the function takes the one lock for admission across replicas (check-then-insert must not interleave, or quotas
# leak): waiting for it and reading cost one round trip (migrations/007_admission.sql).
ADMISSION_LOCK = 0x41657468  # "Aeth"
ADMISSION_STATE = "SELECT counts::text, existing FROM aether_admission_state($1, $2, $3, $4)"


async def lock_jobs(conn: asyncpg.Connection, ids: Iterable[str]) -> dict[str, Job]:
    """The rows of `ids`, locked for this transaction, in id order so two writers never deadlock.

    FOR NO KEY UPDATE, the lock an UPDATE of non-key columns takes: two transitions of one job still wait for each
    other, but rows that only reference the job (its events and log lines, whose foreign keys take a key-share
    lock) are written without waiting for, or blocking, a transaction that holds it."""
    rows = await conn.fetch("SELECT * FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE",
                            sorted(set(ids)))
    return {r["id"]: Job.from_row(r) for r in rows}


def transition_event(a: Applied) -> tuple:
    """A transition's job_events row (EVENT_COLUMNS)."""
    return (a.job.id, a.job.attempt, a.prev.value, a.job.state.value, a.job.state_since, a.duration_s,
            a.transition.source, a.job.node or a.prev_node or a.transition.node, a.transition.reason)


async def write_transitions(conn: asyncpg.Connection, applied: Sequence[Applied], logs: Sequence[tuple] = ()
                            ) -> None:
    """Update each changed job once (its final row) and append one event per transition, in one statement; with
    `logs` (rows for `insert_logs`), those log lines too."""
    last: dict[str, Job] = {}
    for a in applied:
        last[a.job.id] = a.job
    jobs = _columns([j.row_values() for j in last.values()])
    events = _columns([transition_event(a) for a in applied])
    if logs:
        await conn.execute(UPDATE_JOBS_AND_LOGS, *jobs, *events, *_columns(_log_order(logs)))
    else:
        await conn.execute(UPDATE_JOBS, *jobs, *events)


async def write_if_unchanged(conn: asyncpg.Connection, applied: Sequence[Applied], was: dict[str, Job], fence: str,
                             logs: Sequence[tuple] = ()) -> tuple[bool, set[str]]:
    """`write_transitions` for transitions decided on copies of the jobs (`was`: each job as the copy had it), as
    ONE statement outside any transaction (it commits on its own), writing a job only if its row still is what the
    copy says, and nothing unless `fence` (an SQL condition) holds. Returns (whether it held, the ids written)."""
    last: dict[str, Job] = {}
    for a in applied:
        last[a.job.id] = a.job
    jobs = [(*j.row_values(), was[j.id].state.value, was[j.id].attempt, was[j.id].state_since,
             was[j.id].cancel_requested_at) for j in last.values()]
    row = await conn.fetchrow(_update_if_unchanged(fence), *_columns(jobs, 21),
                              *_columns([transition_event(a) for a in applied], len(EVENT_COLUMNS)),
                              *_columns(_log_order(logs), len(LOG_COLUMNS)))
    return row["held"], set(row["changed"])


def _log_order(rows: Sequence[tuple]) -> list[tuple]:
    # In key order: two batches that both carry a redelivered line then wait for each other's row in one order,
    # never in a cycle (a deadlock).
    return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


def _columns(rows: list[tuple], width: int = 0) -> list[list]:
    """Rows to the column arrays the unnest statements take; `width` columns of none when there are no rows."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


async def admission_state(conn: asyncpg.Connection, keys: list[tuple[str, str]]
                          ) -> tuple[dict[str, tuple[int, int]], int, dict[tuple[str, str], Job]]:
    """Takes admission's lock (held to the end of the transaction), then reads: per tenant (unfinished jobs, GPUs
    they ask for), the number of PENDING jobs overall, and the jobs already submitted under `keys` ((tenant,
    idempotency key) pairs)."""
    row = await conn.fetchrow(ADMISSION_STATE, ADMISSION_LOCK, ACTIVE, [k[0] for k in keys], [k[1] for k in keys])
    counts = orjson.loads(row["counts"])
    existing: dict[tuple[str, str], Job] = {}
    if row["existing"]:
        for r in await conn.fetch("SELECT * FROM jobs WHERE id = ANY($1::text[])", row["existing"]):
            existing[(r["tenant"], r["idempotency_key"])] = Job.from_row(r)
    return {t: (active, gpus) for t, active, gpus, _ in counts}, sum(c[3] for c in counts), existing


async def insert_jobs(conn: asyncpg.Connection, jobs: Sequence[Job], placed: Sequence[Applied] = (),
                      also: tuple[Callable[[int], str], list] | None = None) -> None:
    """Store new jobs with their PENDING events, in one statement; those in `placed` (PENDING -> SCHEDULED, decided
    as they are stored) go in as that transition left them, with its event too. `also`: one more INSERT for the
    same statement, as (its SQL given its first parameter number, its arguments) - the placement rows."""
    final = {a.job.id: a.job for a in placed}
    events = [(j.id, 0, None, JobState.PENDING.value, j.submitted_at, None, "orchestrator", None, "submitted")
              for j in jobs]
    events += [transition_event(a) for a in placed]
    args = [*_columns([final.get(j.id, j).new_row_values() for j in jobs]), *_columns(events)]
    if also is None:
        await conn.execute(INSERT_JOBS, *args)
        return
    sql, more = also
    await conn.execute(_insert_jobs_and(sql, len(args) + 1), *args, *more)


@functools.lru_cache(maxsize=4)
def _insert_jobs_and(sql: Callable[[int], str], first: int) -> str:
    return f"{_INSERT_JOBS}, also_rows AS ({sql(first)}){_insert_events(30)}"


async def get_job(conn: asyncpg.Connection | asyncpg.Pool, job_id: str) -> Job | None:
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    return Job.from_row(row) if row else None


async def list_jobs(conn: asyncpg.Connection, *, states: list[str] | None, tenant: str | None, limit: int,
                    before: datetime | None = None) -> list[Job]:
    clauses, args = [], []
    if states:
        args.append(states)
        clauses.append(f"state = ANY(${len(args)}::text[])")
    if tenant:
        args.append(tenant)
        clauses.append(f"tenant = ${len(args)}")
    if before:
        args.append(before)
        clauses.append(f"submitted_at < ${len(args)}")
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(limit)
    rows = await conn.fetch(f"SELECT * FROM jobs {where} ORDER BY submitted_at DESC, id DESC LIMIT ${len(args)}",
                            *args)
    return [Job.from_row(r) for r in rows]


async def active_jobs(conn: asyncpg.Connection, states: list[str] | None = None) -> list[Job]:
    rows = await conn.fetch("SELECT * FROM jobs WHERE state = ANY($1::text[]) ORDER BY submitted_at, id",
                            states or ACTIVE)
    return [Job.from_row(r) for r in rows]


async def events(conn: asyncpg.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT attempt, from_state, to_state, time, recorded_at, duration_s, source, node, reason "
                            "FROM job_events WHERE job_id = $1 ORDER BY id", job_id)
    return [dict(r) for r in rows]


async def insert_logs(conn: asyncpg.Connection, rows: Sequence[tuple]) -> None:
    """Store log lines (LOG_COLUMNS) of known jobs; a redelivered line (same job, attempt, seq) is stored once."""
    if rows:
        await conn.execute(INSERT_LOGS, *_columns(_log_order(rows)))


async def logs(conn: asyncpg.Connection, job_id: str, *, after_id: int = 0, attempt: int | None = None,
               limit: int = 10000) -> list[asyncpg.Record]:
    if attempt is None:
        return await conn.fetch("SELECT id, attempt, seq, stream, line, time FROM job_logs WHERE job_id = $1 "
                                "AND id > $2 ORDER BY attempt, seq LIMIT $3", job_id, after_id, limit)
    return await conn.fetch("SELECT id, attempt, seq, stream, line, time FROM job_logs WHERE job_id = $1 AND id > $2 "
                            "AND attempt = $3 ORDER BY seq LIMIT $4", job_id, after_id, attempt, limit)


async def request_cancel(conn: asyncpg.Connection, job_id: str) -> Job | None:
    """Mark a job on a node as to be cancelled; None if it is no longer SCHEDULED/RUNNING."""
    row = await conn.fetchrow("UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), "
                              "updated_at = now() WHERE id = $1 AND state IN ('SCHEDULED', 'RUNNING') RETURNING *",
                              job_id)
    return Job.from_row(row) if row else None


async def purge_finished(conn: asyncpg.Connection, older_than_h: float, batch: int = 5000) -> int:
    """Delete finished jobs (with their events and logs) older than the retention; returns how many."""
    status = await conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < now() - make_interval(secs => $1) "
        "AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT') LIMIT $2)", older_than_h * 3600.0, batch)
    return int(status.split()[-1])


async def outcome_stats(conn: asyncpg.Connection, window_s: float) -> asyncpg.Record:
    """Success rate and mean run time of the jobs finished in the last `window_s` seconds."""
    return await conn.fetchrow(
        "SELECT count(*) AS finished, count(*) FILTER (WHERE state = 'SUCCEEDED') AS succeeded, "
        "avg(extract(epoch FROM finished_at - started_at)) FILTER (WHERE started_at IS NOT NULL) AS mean_s "
        "FROM jobs WHERE finished_at > now() - make_interval(secs => $1) "
        "AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')", window_s)


async def state_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT state, count(*) AS n FROM jobs WHERE state = ANY($1::text[]) GROUP BY state",
                            ACTIVE)
    return {r["state"]: r["n"] for r in rows}
