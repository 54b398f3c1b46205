-- Placement: every decision (AI core or heuristic fallback) with its scores and explanation, and the
-- versions of the placement model with their training metrics.
CREATE TABLE IF NOT EXISTS model_versions (
    version        text PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    source         text NOT NULL,                 -- synthetic | db | synthetic+db
    rows           integer NOT NULL,
    metrics        jsonb NOT NULL DEFAULT '{}',   -- valid_rmse_log, valid_r2, rounds, ...
    training       jsonb NOT NULL DEFAULT '{}',   -- seeds, episodes, rows per source
    feature_schema text NOT NULL,
    path           text,
    sha256         text,
    activated      boolean NOT NULL DEFAULT true
);
CREATE INDEX IF NOT EXISTS model_versions_created_idx ON model_versions (created_at DESC);

CREATE TABLE IF NOT EXISTS placements (
    id                      bigserial PRIMARY KEY,
    job_id                  text,                 -- no foreign key: decisions are kept even for purged jobs
    time                    timestamptz NOT NULL DEFAULT now(),
    policy                  text NOT NULL CHECK (policy IN ('xgboost', 'heuristic')),
    fallback_reason         text,
    model_version           text,
    chosen_uuid             text NOT NULL,
    chosen_node             text NOT NULL,
    chosen_uuids            text[] NOT NULL,
    runner_up_uuid          text,
    candidates              integer,
    scores                  jsonb NOT NULL DEFAULT '{}',
    contributions           jsonb NOT NULL DEFAULT '[]',
    runner_up_contributions jsonb NOT NULL DEFAULT '[]',
    rejected                jsonb NOT NULL DEFAULT '{}',
    latency_ms              double precision,
    job_features            jsonb,                -- JobFeatures at decision time
    chosen_state            jsonb                 -- the chosen GPUs' Candidate state at decision time
);
CREATE INDEX IF NOT EXISTS placements_job_idx ON placements (job_id, time DESC);
CREATE INDEX IF NOT EXISTS placements_time_idx ON placements (time DESC);
