"""Simulated GPUs: the same TelemetrySample fields as NVML gives, from services.gpu_physics stepped in real time,
loaded by the jobs the agent runs, with injectable faults. Deterministic for a seed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from agent.errors import InvalidFault
from services import gpu_specs
from services.gpu_physics import GpuPhysics, Workload
from services.schemas import FaultCommand, FaultKind, GpuInventory, GpuProcess, TelemetrySample

_NS = uuid.UUID("6f1c1d2e-7a44-4c0e-9a53-1f6a1ad0e7a1")
MAX_STEP_S = 60.0  # a read after a long pause steps at most this far (the physics stays stable for any step)

DEFAULTS = {FaultKind.STUCK_UTIL: 100.0, FaultKind.OVERHEAT: 40.0, FaultKind.MEM_FILL: 97.0}


def sim_uuid(node: str, index: int) -> str:
    """Stable across restarts of the agent, so the cluster sees the same GPUs come back."""
    return f"GPU-{uuid.uuid5(_NS, f'{node}/{index}')}"


@dataclass(slots=True)
class _SimGpu:
    index: int
    uuid: str
    pci_bus_id: str
    physics: GpuPhysics
    loads: dict[str, tuple[Workload, int | None]] = field(default_factory=dict)  # job id -> (workload, pid)


class SimSource:
    """`count` GPUs of `model` on `node`. `read()` steps each GPU by the real time since the previous read."""

    simulated = True
    driver_version: str | None = None  # a simulated node has no driver: null, never invented
    cuda_version: str | None = None

    def __init__(self, node: str, count: int = 4, model: str = gpu_specs.DEFAULT_MODEL, *, ambient_c: float = 30.0,
                 seed: int = 0, interval_s: float = 1.0, noise: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.spec = gpu_specs.spec(model)
        self.interval_s = interval_s
        self.clock = clock
        self.gpus = [_SimGpu(index=i, uuid=sim_uuid(node, i), pci_bus_id=f"00000000:{0x18 + 0x10 * i & 0xFF:02X}:00.0",
                             physics=GpuPhysics(self.spec, ambient_c=ambient_c, seed=seed * 1009 + i, noise=noise))
                     for i in range(count)]
        self._jobs: dict[str, list[int]] = {}
        self._expiries: list[tuple[float, int, FaultKind, str | None]] = []
        self._last: float | None = None
        # read() runs in the sampling thread; jobs and faults arrive on the event loop.
        self._lock = threading.Lock()

    # --- reading ----------------------------------------------------------------------------------------
    def read(self, now: datetime) -> list[TelemetrySample]:
        with self._lock:
            t = self.clock()
            dt = self.interval_s if self._last is None else min(max(t - self._last, 0.0), MAX_STEP_S)
            self._last = t
            if self._expiries:
                self._expire(t)
            out = []
            for g in self.gpus:
                sample = self._read_gpu(g, now, dt)
                if sample is not None:
                    out.append(sample)
            return out

    def step(self, dt: float, now: datetime) -> list[TelemetrySample]:
        """Advance by exactly `dt` (tests and benchmarks use it for determinism)."""
        with self._lock:
            return [s for g in self.gpus if (s := self._read_gpu(g, now, dt)) is not None]

    def _read_gpu(self, g: _SimGpu, now: datetime, dt: float) -> TelemetrySample | None:
        ph = g.physics
        st = ph.step(dt, [w for w, _ in g.loads.values()])
        if ph.faults.silent:
            return None
        if not st.healthy:
            return TelemetrySample(time=now, node=self.node, gpu_index=g.index, gpu_uuid=g.uuid, name=self.spec.name,
                                   healthy=False, error="GPU is lost (NVML_ERROR_GPU_IS_LOST, simulated)",
                                   xid_errors=ph.drain_xids(), pci_bus_id=g.pci_bus_id,
                                   mem_total_mb=st.mem_total_mb, power_limit_w=st.power_limit_w)
        has_ecc = not self.spec.fan  # datacenter boards run with ECC on; consumer boards report it unsupported
        return TelemetrySample(
            time=now, node=self.node, gpu_index=g.index, gpu_uuid=g.uuid, name=self.spec.name, healthy=True,
            util_gpu_pct=st.util_gpu_pct, util_mem_pct=st.util_mem_pct, mem_used_mb=st.mem_used_mb,
            mem_total_mb=st.mem_total_mb, temp_c=st.temp_c, mem_temp_c=st.mem_temp_c, power_w=st.power_w,
            power_limit_w=st.power_limit_w, energy_mj=round(st.energy_mj, 0), sm_clock_mhz=st.sm_clock_mhz,
            gfx_clock_mhz=st.gfx_clock_mhz, mem_clock_mhz=st.mem_clock_mhz, pstate=st.pstate,
            throttle_reasons=list(st.throttle_reasons), fan_pct=st.fan_pct,
            ecc_sbe=st.ecc_sbe if has_ecc else None, ecc_dbe=st.ecc_dbe if has_ecc else None,
            remapped_rows=st.remapped_rows if has_ecc else None,
            pcie_tx_kbps=st.pcie_tx_kbps, pcie_rx_kbps=st.pcie_rx_kbps, xid_errors=ph.drain_xids(),
            processes=[GpuProcess(pid=pid, used_mem_mb=w.mem_mb) for w, pid in g.loads.values() if pid is not None],
            mig_mode=False if has_ecc else None, pci_bus_id=g.pci_bus_id,
        )

    # --- jobs -------------------------------------------------------------------------------------------
    def attach_job(self, job_id: str, gpu_indices: list[int], workload: Workload, pid: int | None = None) -> None:
        with self._lock:
            for i in gpu_indices:
                if 0 <= i < len(self.gpus):
                    self.gpus[i].loads[job_id] = (workload, pid)
            self._jobs[job_id] = list(gpu_indices)

    def detach_job(self, job_id: str) -> None:
        with self._lock:
            for i in self._jobs.pop(job_id, []):
                if 0 <= i < len(self.gpus):
                    self.gpus[i].loads.pop(job_id, None)

    # --- faults -----------------------------------------------------------------------------------------
    def apply_fault(self, cmd: FaultCommand) -> str:
        """Inject `cmd` and say what was done; InvalidFault for a GPU index this node does not have."""
        if cmd.gpu_index is not None and not 0 <= cmd.gpu_index < len(self.gpus):
            raise InvalidFault(f"gpu_index {cmd.gpu_index} is not on {self.node} (it has {len(self.gpus)} GPUs)")
        targets = self.gpus if cmd.gpu_index is None else [self.gpus[cmd.gpu_index]]
        value = cmd.value if cmd.value is not None else DEFAULTS.get(cmd.fault)
        with self._lock:
            for g in targets:
                ph, f = g.physics, g.physics.faults
                match cmd.fault:
                    case FaultKind.ECC_SBE:
                        ph.add_ecc(sbe=cmd.count)
                    case FaultKind.ECC_DBE:
                        ph.add_ecc(dbe=cmd.count)
                    case FaultKind.XID:
                        for _ in range(cmd.count):
                            ph.add_xid(cmd.xid)
                    case FaultKind.FALL_OFF_BUS:
                        ph.fall_off_bus()
                    case FaultKind.STUCK_UTIL:
                        f.stuck_util_pct = value
                    case FaultKind.OVERHEAT:
                        f.overheat_c = value
                    case FaultKind.MEM_FILL:
                        f.mem_fill_pct = value
                    case FaultKind.DRIFT:
                        f.drift_rate[cmd.metric] = cmd.rate_per_s
                        f.drift_offset[cmd.metric] = 0.0
                    case FaultKind.SILENCE:
                        f.silent = True
                    case FaultKind.CLEAR:
                        f.clear()
                        self._expiries = [e for e in self._expiries if e[1] != g.index]
                if cmd.duration_s and cmd.fault not in (FaultKind.CLEAR, FaultKind.ECC_SBE, FaultKind.ECC_DBE,
                                                        FaultKind.XID):
                    self._expiries.append((self.clock() + cmd.duration_s, g.index, cmd.fault, cmd.metric))
        where = "all GPUs" if cmd.gpu_index is None else f"GPU {cmd.gpu_index}"
        return f"{cmd.fault.value} applied to {where} of {self.node}" + (
            f" for {cmd.duration_s:g}s" if cmd.duration_s else "")

    def _expire(self, t: float) -> None:
        due = [e for e in self._expiries if e[0] <= t]
        if not due:
            return
        self._expiries = [e for e in self._expiries if e[0] > t]
        for _, index, kind, metric in due:
            f = self.gpus[index].physics.faults
            match kind:
                case FaultKind.FALL_OFF_BUS:
                    f.lost = False
                case FaultKind.STUCK_UTIL:
                    f.stuck_util_pct = None
                case FaultKind.OVERHEAT:
                    f.overheat_c = 0.0
                case FaultKind.MEM_FILL:
                    f.mem_fill_pct = None
                case FaultKind.DRIFT:
                    f.drift_rate.pop(metric, None)
                    f.drift_offset.pop(metric, None)
                case FaultKind.SILENCE:
                    f.silent = False

    def active_faults(self) -> dict[int, list[str]]:
        with self._lock:
            return {g.index: g.physics.faults.active for g in self.gpus if g.physics.faults.active}

    # --- the rest of the GpuSource protocol ----------------------------------------------------------------
    def inventory(self) -> list[GpuInventory]:
        return [GpuInventory(uuid=g.uuid, index=g.index, name=self.spec.name, mem_total_mb=float(self.spec.mem_total_mb),
                             pci_bus_id=g.pci_bus_id, power_limit_w=g.physics.power_limit_w,
                             healthy=g.physics.state.healthy) for g in self.gpus]

    def close(self) -> None:
        """Nothing to release."""
