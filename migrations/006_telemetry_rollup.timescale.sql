-- aether: no-transaction
-- The 1-minute rollup of gpu_samples as a continuous aggregate (avg/min/max per GPU and minute), with real-time
-- aggregation on so a query also sees the minutes not materialised yet; then compression and retention policies.
-- The periods here are the defaults (7 days raw, 90 days rollup): orchestrator/partitions.py sets them to the
-- configured values at start-up.
CREATE MATERIALIZED VIEW gpu_samples_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
    gpu_uuid,
    node,
    count(*) AS n,
    count(*) FILTER (WHERE NOT healthy) AS unhealthy_n,
    avg(util_gpu_pct) AS util_gpu_pct_avg, min(util_gpu_pct) AS util_gpu_pct_min, max(util_gpu_pct) AS util_gpu_pct_max,
    avg(util_mem_pct) AS util_mem_pct_avg, min(util_mem_pct) AS util_mem_pct_min, max(util_mem_pct) AS util_mem_pct_max,
    avg(mem_used_mb) AS mem_used_mb_avg, min(mem_used_mb) AS mem_used_mb_min, max(mem_used_mb) AS mem_used_mb_max,
    avg(temp_c) AS temp_c_avg, min(temp_c) AS temp_c_min, max(temp_c) AS temp_c_max,
    avg(power_w) AS power_w_avg, min(power_w) AS power_w_min, max(power_w) AS power_w_max,
    avg(sm_clock_mhz) AS sm_clock_mhz_avg, min(sm_clock_mhz) AS sm_clock_mhz_min, max(sm_clock_mhz) AS sm_clock_mhz_max,
    avg(mem_clock_mhz) AS mem_clock_mhz_avg, min(mem_clock_mhz) AS mem_clock_mhz_min, max(mem_clock_mhz) AS mem_clock_mhz_max,
    min(energy_mj) AS energy_mj_min, max(energy_mj) AS energy_mj_max
FROM gpu_samples
GROUP BY bucket, gpu_uuid, node
WITH NO DATA;

-- Refresh every minute over the last day: late samples (an agent flushing its buffer after a partition)
-- invalidate their minutes and are re-materialised; the window stays well inside raw retention, so a
-- refresh never runs over dropped chunks.
SELECT add_continuous_aggregate_policy('gpu_samples_1m', start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute');

ALTER TABLE gpu_samples SET (timescaledb.compress, timescaledb.compress_segmentby = 'gpu_uuid',
    timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('gpu_samples', compress_after => INTERVAL '6 hours');

ALTER MATERIALIZED VIEW gpu_samples_1m SET (timescaledb.compress = true);
SELECT add_compression_policy('gpu_samples_1m', compress_after => INTERVAL '7 days');

SELECT add_retention_policy('gpu_samples', drop_after => INTERVAL '7 days');
SELECT add_retention_policy('gpu_samples_1m', drop_after => INTERVAL '90 days');
