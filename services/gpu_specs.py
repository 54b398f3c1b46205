"""Specifications of the GPU models the simulator and the placement model know, from the vendors' datasheets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str  # as NVML reports it
    mem_total_mb: int
    power_limit_w: float
    idle_power_w: float
    max_sm_clock_mhz: int
    base_sm_clock_mhz: int
    max_mem_clock_mhz: int
    mem_bandwidth_gbps: float
    fp16_tflops: float
    slowdown_temp_c: float  # thermal throttling starts (NVML's slowdown threshold)
    shutdown_temp_c: float
    fan: bool  # datacenter boards are passively cooled: NVML reports no fan speed


SPECS: dict[str, GpuSpec] = {
    "A100-80GB": GpuSpec("NVIDIA A100-SXM4-80GB", 81920, 400.0, 55.0, 1410, 1065, 1593, 2039.0, 312.0, 85.0, 92.0,
                         False),
    "H100-80GB": GpuSpec("NVIDIA H100 80GB HBM3", 81559, 700.0, 70.0, 1980, 1590, 2619, 3350.0, 989.0, 87.0, 95.0,
                         False),
    "L4": GpuSpec("NVIDIA L4", 23034, 72.0, 16.0, 2040, 795, 6251, 300.0, 121.0, 88.0, 95.0, False),
    "RTX-4090": GpuSpec("NVIDIA GeForce RTX 4090", 24564, 450.0, 25.0, 2520, 2235, 10501, 1008.0, 165.0, 88.0, 95.0,
                        True),
}

DEFAULT_MODEL = "H100-80GB"


def spec(model: str) -> GpuSpec:
    """Look up by key (`H100-80GB`) or by NVML name (`NVIDIA H100 80GB HBM3`)."""
    if model in SPECS:
        return SPECS[model]
    for s in SPECS.values():
        if s.name == model:
            return s
    raise KeyError(f"unknown GPU model {model!r}; known: {', '.join(SPECS)}")
