-- GPU samples on plain PostgreSQL, range-partitioned by time (partitions are created ahead by the orchestrator). One row per (GPU, time): the primary key makes a second copy impossible.
CREATE TABLE gpu_samples (
    time              timestamptz NOT NULL,
    gpu_uuid          text NOT NULL,
    node              text NOT NULL,
    gpu_index         smallint NOT NULL,
    healthy           boolean NOT NULL,
    util_gpu_pct      real,
    util_mem_pct      real,
    mem_used_mb       real,
    mem_total_mb      real,
    temp_c            real,
    power_w           real,
    power_limit_w     real,
    sm_clock_mhz      real,
    mem_clock_mhz     real,
    pstate            smallint,
    throttle_reasons  text[],
    fan_pct           real,
    energy_mj         double precision,
    ecc_sbe           bigint,
    ecc_dbe           bigint,
    pcie_tx_kbps      real,
    pcie_rx_kbps      real,
    xid_errors        integer[],
    extra             jsonb,
    PRIMARY KEY (gpu_uuid, time)
) PARTITION BY RANGE (time);
CREATE INDEX gpu_samples_time_idx ON gpu_samples (time DESC);
-- Catches rows outside every dated partition, so an insert never fails for want of one.
CREATE TABLE gpu_samples_default PARTITION OF gpu_samples DEFAULT;
