-- The 1-minute rollup of gpu_samples on plain PostgreSQL: the same columns as TimescaleDB's continuous aggregate,
-- kept current by orchestrator/partitions.py (re-aggregating recent minutes and any minute that received late
-- samples) and trimmed to its retention (default 90 days).
CREATE TABLE gpu_samples_1m (
    bucket         timestamptz NOT NULL,
    gpu_uuid       text NOT NULL,
    node           text NOT NULL,
    n              bigint NOT NULL,
    unhealthy_n    bigint NOT NULL,
    util_gpu_pct_avg double precision, util_gpu_pct_min real, util_gpu_pct_max real,
    util_mem_pct_avg double precision, util_mem_pct_min real, util_mem_pct_max real,
    mem_used_mb_avg double precision, mem_used_mb_min real, mem_used_mb_max real,
    temp_c_avg double precision, temp_c_min real, temp_c_max real,
    power_w_avg double precision, power_w_min real, power_w_max real,
    sm_clock_mhz_avg double precision, sm_clock_mhz_min real, sm_clock_mhz_max real,
    mem_clock_mhz_avg double precision, mem_clock_mhz_min real, mem_clock_mhz_max real,
    energy_mj_min  double precision,
    energy_mj_max  double precision,
    PRIMARY KEY (gpu_uuid, bucket)
);
CREATE INDEX gpu_samples_1m_bucket_idx ON gpu_samples_1m (bucket);
CREATE INDEX gpu_samples_1m_node_idx ON gpu_samples_1m (node, bucket);
