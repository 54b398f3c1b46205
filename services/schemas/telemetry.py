"""Telemetry on `aether.telemetry.<node>`: one TelemetryBatch per node per tick, one sample per GPU."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from services.schemas.base import BusMessage, UtcDatetime


class GpuProcess(BaseModel):
    pid: int
    used_mem_mb: float | None = None


class TelemetrySample(BusMessage):
    """One GPU at one instant. Any reading the device cannot give is null, never invented."""

    v: Literal[1] = 1
    time: UtcDatetime
    node: str = Field(min_length=1, max_length=64)
    gpu_index: int = Field(ge=0, le=1023)
    gpu_uuid: str = Field(min_length=1, max_length=128)
    name: str = Field(max_length=128)
    healthy: bool = True
    util_gpu_pct: float | None = Field(default=None, ge=0, le=100)
    util_mem_pct: float | None = Field(default=None, ge=0, le=100)
    mem_used_mb: float | None = Field(default=None, ge=0)
    mem_total_mb: float | None = Field(default=None, ge=0)
    temp_c: float | None = None
    power_w: float | None = Field(default=None, ge=0)
    power_limit_w: float | None = Field(default=None, ge=0)
    sm_clock_mhz: float | None = Field(default=None, ge=0)
    mem_clock_mhz: float | None = Field(default=None, ge=0)
    pstate: int | None = Field(default=None, ge=0, le=32)
    throttle_reasons: list[str] = Field(default_factory=list)
    fan_pct: float | None = Field(default=None, ge=0)
    # Fields beyond the first slice (issue 3): all optional, null when unsupported.
    pci_bus_id: str | None = None
    gfx_clock_mhz: float | None = None
    mem_temp_c: float | None = None
    bar1_used_mb: float | None = None
    bar1_total_mb: float | None = None
    energy_mj: float | None = Field(default=None, description="total energy counter since driver load, millijoules")
    ecc_sbe: int | None = None
    ecc_dbe: int | None = None
    pcie_tx_kbps: float | None = None
    pcie_rx_kbps: float | None = None
    retired_pages: int | None = None
    remapped_rows: int | None = None
    xid_errors: list[int] = Field(default_factory=list, description="XID events seen since the previous sample")
    processes: list[GpuProcess] | None = None
    mig_mode: bool | None = None
    error: str | None = Field(default=None, description="why the GPU is unhealthy, when it is")


class TelemetryBatch(BusMessage):
    """All GPUs of one node at one tick. `seq` increases per agent run and makes the JetStream msg id."""

    v: Literal[1] = 1
    node: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    time: UtcDatetime
    interval_s: float | None = Field(default=None, gt=0)
    samples: list[TelemetrySample] = Field(max_length=1024)

    @model_validator(mode="after")
    def _samples_belong_to_node(self) -> TelemetryBatch:
        for s in self.samples:
            if s.node != self.node:
                raise ValueError(f"sample for GPU {s.gpu_uuid} names node {s.node!r}, batch is {self.node!r}")
        return self

    def msg_id(self) -> str:
        """JetStream de-duplication id: a retried publish of the same tick is stored once."""
        return f"{self.node}:{int(self.time.timestamp() * 1000)}"
