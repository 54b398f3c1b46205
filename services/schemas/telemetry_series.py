"""HTTP body of `GET /v1/gpus/{uuid}/telemetry`: one GPU's stored samples over a time range, raw or bucketed."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Metrics the 1-minute rollup (and any bucketed answer) carries as <metric>_avg, <metric>_min, <metric>_max.
BUCKETED_METRICS = ("util_gpu_pct", "util_mem_pct", "mem_used_mb", "temp_c", "power_w", "sm_clock_mhz",
                    "mem_clock_mhz")

# Columns a raw answer may carry (`fields=` picks some); `processes` only when asked for by name.
RAW_FIELDS = ("healthy", "util_gpu_pct", "util_mem_pct", "mem_used_mb", "mem_total_mb", "temp_c", "mem_temp_c",
              "power_w", "power_limit_w", "energy_mj", "sm_clock_mhz", "mem_clock_mhz", "gfx_clock_mhz", "pstate",
              "fan_pct", "throttle_reasons", "xid_errors", "ecc_sbe", "ecc_dbe", "retired_pages", "remapped_rows",
              "pcie_tx_kbps", "pcie_rx_kbps", "bar1_used_mb", "bar1_total_mb", "mig_mode", "error", "processes")


class TelemetrySeries(BaseModel):
    """Points in time order. Raw: one point per stored sample, `time` plus the requested fields. Bucketed:
    one point per bucket holding samples, `time` (bucket start, aligned to 2000-01-03T00:00Z), `n` (samples),
    and `<metric>_avg/_min/_max` for each requested metric."""

    model_config = ConfigDict(populate_by_name=True)

    v: Literal[1] = 1
    gpu_uuid: str
    from_: datetime = Field(alias="from")
    to: datetime
    bucket_s: float | None = Field(None, description="bucket width in seconds; null for raw samples")
    source: Literal["raw", "raw_bucketed", "rollup"] = Field(
        description="raw samples; raw samples bucketed on the fly; or the 1-minute rollup (continuous aggregate)")
    storage: Literal["timescaledb", "postgresql", "unknown"]
    fields: list[str]
    points: list[dict[str, Any]]
    truncated: bool = Field(False, description="raw only: more samples than the point limit; continue at next_from")
    next_from: datetime | None = None
