"""Heartbeat on `aether.heartbeat.<node>`: the agent's inventory, running jobs and sampling interval."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from services.schemas.base import BusMessage, UtcDatetime


class GpuInventory(BaseModel):
    uuid: str
    index: int
    name: str
    mem_total_mb: float | None = None
    pci_bus_id: str | None = None
    power_limit_w: float | None = None
    healthy: bool = True


class Heartbeat(BusMessage):
    v: Literal[1] = 1
    node: str = Field(min_length=1, max_length=64)
    time: UtcDatetime
    agent_version: str
    started_at: UtcDatetime | None = None
    interval_s: float = Field(gt=0)
    simulated: bool = False
    driver_version: str | None = None
    cuda_version: str | None = None
    gpus: list[GpuInventory] = Field(default_factory=list)
    running_jobs: list[str] = Field(default_factory=list)
    hostname: str | None = None
