-- GPU samples on plain PostgreSQL, range-partitioned by day (orchestrator/partitions.py makes the days ahead and
-- drops them at the end of retention).
-- One row per (GPU, time): the primary key makes a second copy of a sample impossible, which is what lets ingest
-- retry a batch without duplicating it. Static properties (PCI bus id, model name) live in `gpus`; a row holds
-- what changes from tick to tick. Throttle reasons are a bit mask and an empty XID list is NULL: text and integer
-- arrays cost more to COPY than every other column together.
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
    mem_temp_c        real,
    power_w           real,
    power_limit_w     real,
    energy_mj         double precision,
    sm_clock_mhz      real,
    mem_clock_mhz     real,
    gfx_clock_mhz     real,
    pstate            smallint,
    fan_pct           real,
    ecc_sbe           bigint,
    ecc_dbe           bigint,
    retired_pages     integer,
    remapped_rows     integer,
    pcie_tx_kbps      real,
    pcie_rx_kbps      real,
    bar1_used_mb      real,
    bar1_total_mb     real,
    mig_mode          boolean,
    error             text,
    throttle_mask     integer NOT NULL DEFAULT 0,  -- NVML clocks-event reason bits (orchestrator/throttle.py)
    xid_errors        integer[],                   -- XIDs seen since the previous sample; NULL: none
    processes         jsonb,                       -- [{"pid", "used_mem_mb"}]; NULL: not reported
    PRIMARY KEY (gpu_uuid, time)
) PARTITION BY RANGE (time);
CREATE INDEX gpu_samples_time_idx ON gpu_samples (time DESC);
-- Catches rows outside every dated partition (late or clock-skewed), so an insert never fails for want of one;
-- partition upkeep moves its rows into a dated partition when it makes one for their day.
CREATE TABLE gpu_samples_default PARTITION OF gpu_samples DEFAULT;
