-- Cluster membership: nodes and their GPUs, kept current from heartbeats.
CREATE TABLE nodes (
    name            text PRIMARY KEY,
    hostname        text,
    agent_version   text,
    simulated       boolean NOT NULL DEFAULT false,
    interval_s      double precision,
    driver_version  text,
    cuda_version    text,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz,
    healthy         boolean NOT NULL DEFAULT true
);

CREATE TABLE gpus (
    uuid            text PRIMARY KEY,
    node            text NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    idx             integer NOT NULL,
    name            text NOT NULL,
    mem_total_mb    double precision,
    power_limit_w   double precision,
    pci_bus_id      text,
    healthy         boolean NOT NULL DEFAULT true,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gpus_node_idx ON gpus (node, idx);
