"""Fault injection on `aether.cmd.<node>.fault` (simulated nodes only): request FaultCommand, reply CommandReply."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from services.schemas.base import BusMessage


class FaultKind(StrEnum):
    ECC_SBE = "ecc_sbe"  # `count` corrected (single-bit) ECC errors
    ECC_DBE = "ecc_dbe"  # `count` uncorrected (double-bit) errors: a retired page / remapped row and XID 48 each
    XID = "xid"  # one XID event with code `xid`
    FALL_OFF_BUS = "fall_off_bus"  # NVML loses the GPU: unhealthy placeholder samples, XID 79
    STUCK_UTIL = "stuck_util"  # utilisation pinned at `value` % (default 100) whatever runs
    OVERHEAT = "overheat"  # `value` extra degrees C at the sensor (default 40): thermal throttling follows
    MEM_FILL = "mem_fill"  # memory used pinned at `value` % of total (default 97)
    DRIFT = "drift"  # `metric` drifts by `rate_per_s` units per second, however slowly
    SILENCE = "silence"  # the GPU's samples stop while the agent keeps running (stale telemetry)
    CLEAR = "clear"  # every fault on the target GPU(s) cleared; counters (ECC) keep their values


class FaultCommand(BusMessage):
    """Inject a fault into one simulated GPU (`gpu_index`) or all GPUs of the node (`gpu_index` null).
    `duration_s` clears that fault by itself after the given time."""

    v: Literal[1] = 1
    fault: FaultKind
    gpu_index: int | None = Field(default=None, ge=0, le=1023)
    count: int = Field(default=1, ge=1, le=1_000_000)
    xid: int = Field(default=13, ge=1, le=1000)
    value: float | None = Field(default=None, ge=0, le=1000)
    metric: Literal["temp_c", "power_w", "util_gpu_pct", "mem_used_mb", "sm_clock_mhz", "fan_pct"] | None = None
    rate_per_s: float | None = Field(default=None, ge=-1e6, le=1e6)
    duration_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _drift_needs(self) -> FaultCommand:
        if self.fault is FaultKind.DRIFT and (self.metric is None or self.rate_per_s is None):
            raise ValueError("a drift fault needs `metric` and `rate_per_s`")
        if self.fault in (FaultKind.STUCK_UTIL, FaultKind.MEM_FILL) and self.value is not None and self.value > 100:
            raise ValueError(f"{self.fault.value}: `value` is a percentage (0-100)")
        return self
