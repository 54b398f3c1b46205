-- Jobs: one row per job (its current state and assignment), every transition in job_events, output in job_logs.
CREATE TABLE jobs (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    tenant              text NOT NULL,
    submitted_by        text,
    idempotency_key     text,
    spec                jsonb NOT NULL,
    job_type            text NOT NULL,
    model               text,
    priority            integer NOT NULL DEFAULT 0,
    gpus                integer NOT NULL,
    gpu_mem_mb          integer NOT NULL,
    max_duration_s      integer NOT NULL,
    state               text NOT NULL CHECK (state IN ('PENDING', 'SCHEDULED', 'RUNNING', 'SUCCEEDED', 'FAILED',
                                                       'CANCELLED', 'TIMED_OUT', 'LOST')),
    attempt             integer NOT NULL DEFAULT 0,    -- dispatches so far; reports carry the attempt they belong to
    lost_count          integer NOT NULL DEFAULT 0,    -- times the job was LOST and re-queued
    node                text,
    assignment          jsonb,                          -- [{"uuid": ..., "index": ...}] on `node`
    placement           jsonb,                          -- the placement decision: policy, model version, scores
    exit_code           integer,
    result              jsonb,
    error               text,
    reason              text,
    pid                 integer,
    cancel_requested_at timestamptz,
    submitted_at        timestamptz NOT NULL,
    scheduled_at        timestamptz,
    started_at          timestamptz,
    finished_at         timestamptz,
    state_since         timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- Unfinished jobs are few and read often (queue, quotas, reconciliation): a small partial index.
CREATE INDEX jobs_active_idx ON jobs (state, tenant) WHERE state IN ('PENDING', 'SCHEDULED', 'RUNNING', 'LOST');
CREATE INDEX jobs_tenant_time_idx ON jobs (tenant, submitted_at DESC);
CREATE INDEX jobs_time_idx ON jobs (submitted_at DESC);
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency_idx ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE job_events (
    id           bigserial PRIMARY KEY,
    job_id       text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    from_state   text,
    to_state     text NOT NULL,
    time         timestamptz NOT NULL,                    -- when it happened, by the reporter's clock
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),  -- when the orchestrator committed it
    duration_s   double precision,                        -- time spent in from_state
    source       text NOT NULL,
    node         text,
    reason       text
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

CREATE TABLE job_logs (
    id       bigserial,
    job_id   text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt  integer NOT NULL,
    seq      integer NOT NULL,
    stream   text NOT NULL,
    line     text NOT NULL,
    time     timestamptz NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)                    -- a redelivered line is stored once
);
