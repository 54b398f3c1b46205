-- Alerts: one row per alert (opened once, resolved once); at most one open alert per key (rule, node, GPU, metric).
CREATE TABLE alerts (
    id               bigserial PRIMARY KEY,
    key              text NOT NULL,
    rule             text NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state            text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    node             text NOT NULL,
    gpu_uuid         text,
    metric           text,
    value            double precision,
    threshold        double precision,
    message          text NOT NULL,
    opened_at        timestamptz NOT NULL,
    resolved_at      timestamptz,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
);
-- The guarantee behind "opens once": a second open alert for the same key cannot be stored, even by a
-- second orchestrator replica or after a restart.
CREATE UNIQUE INDEX alerts_one_open_per_key ON alerts (key) WHERE state = 'open';
CREATE INDEX alerts_opened_idx ON alerts (opened_at DESC);
CREATE INDEX alerts_node_idx ON alerts (node, opened_at DESC);
CREATE INDEX alerts_open_idx ON alerts (severity, opened_at DESC) WHERE state = 'open';
