"""What a GPU source (NVML or simulated) offers the agent: inventory, one read of every GPU, job load hooks."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from services.gpu_physics import Workload
from services.schemas import GpuInventory, TelemetrySample


class GpuSource(Protocol):
    simulated: bool
    driver_version: str | None
    cuda_version: str | None

    def inventory(self) -> list[GpuInventory]:
        """Every GPU with its static facts; `healthy` as of the last read."""

    def read(self, now: datetime) -> list[TelemetrySample]:
        """Sample every GPU once (blocking: the agent calls it from a worker thread, never on the event loop).
        A GPU that cannot be read yields an unhealthy placeholder; the others are still read."""

    def attach_job(self, job_id: str, gpu_indices: list[int], workload: Workload) -> None:
        """A job starts on these GPUs (the simulator loads them; real GPUs need nothing)."""

    def detach_job(self, job_id: str) -> None:
        """The job ended."""

    def close(self) -> None:
        """Release the device library."""
