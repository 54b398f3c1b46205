"""The one shim over NVML (`pynvml`): every read wrapped, an unsupported field is None, a GPU that falls off the
bus becomes an unhealthy placeholder while the others keep being sampled, XID events polled without blocking."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pynvml

from agent.errors import NoGpuFound
from agent.metrics import AgentMetrics
from services import gpu_physics as gp
from services.gpu_physics import Workload
from services.schemas import GpuInventory, GpuProcess, TelemetrySample

log = logging.getLogger("aether.agent.nvml")

MIB = 1024 * 1024

# Clocks-event (throttle) reason bits, as nvml.h defines them, to the names the rest of Aether uses.
THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0x001, gp.IDLE),
    (0x002, gp.APPLICATIONS_CLOCKS),
    (0x004, gp.POWER_CAP),
    (0x008, gp.HW_SLOWDOWN),
    (0x010, gp.SYNC_BOOST),
    (0x020, gp.SW_THERMAL),
    (0x040, gp.HW_THERMAL),
    (0x080, gp.HW_POWER_BRAKE),
    (0x100, gp.DISPLAY_CLOCKS),
    (0x200, gp.BOARD_LIMIT),
    (0x400, gp.RELIABILITY),
)
_KNOWN_BITS = sum(bit for bit, _ in THROTTLE_BITS)

# Errors that mean the GPU itself is gone (or the driver under it): the whole sample becomes a placeholder.
LOST_ERRORS = frozenset({pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_GPU_NOT_FOUND,
                         pynvml.NVML_ERROR_RESET_REQUIRED, pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
                         pynvml.NVML_ERROR_UNINITIALIZED})
# Errors that will not change while the driver stays loaded: stop asking for that field on that GPU.
STATIC_ERRORS = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})

PSTATE_UNKNOWN = 32
HANDLE_RETRY_S = 30.0  # how often a lost GPU's handle is looked up again (it may come back after a reset)
MAX_EVENTS_PER_TICK = 1000
# Counters and settings that change rarely (ECC totals, retired/remapped memory, power limit, MIG mode, BAR1) are
# read this often, not every tick: they are a third of the NVML calls, and a new double-bit error announces itself
# at once anyway as XID 48.
SLOW_PERIOD_S = 10.0


def decode_throttle(mask: int) -> list[str]:
    """Names of the reasons set in an NVML clocks-event bit mask; bits NVML adds later show as `unknown_0x..`."""
    return list(_decode_cached(mask))


@functools.lru_cache(maxsize=256)  # a GPU shows a handful of masks: decode each once
def _decode_cached(mask: int) -> tuple[str, ...]:
    names = [name for bit, name in THROTTLE_BITS if mask & bit]
    rest = mask & ~_KNOWN_BITS
    bit = 1
    while rest:
        if rest & bit:
            names.append(f"unknown_0x{bit:x}")
            rest &= ~bit
        bit <<= 1
    return tuple(names)


_ERROR_NAMES = {getattr(pynvml, n): n.removeprefix("NVML_ERROR_").lower()
                for n in dir(pynvml) if n.startswith("NVML_ERROR_")}


def error_name(exc: BaseException) -> str:
    """NVML_ERROR_GPU_IS_LOST -> `gpu_is_lost`: a short stable label for metrics and sample errors."""
    return _ERROR_NAMES.get(getattr(exc, "value", None), type(exc).__name__)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuLost(Exception):
    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.nvml_error = exc


@dataclass(slots=True)
class _Device:
    index: int
    handle: Any
    uuid: str
    name: str
    pci_bus_id: str | None
    mem_total_mb: float | None
    power_limit_w: float | None
    unsupported: set[str] = field(default_factory=set)
    healthy: bool = True
    error: str | None = None
    lost_since: float | None = None
    last_handle_retry: float = 0.0
    pcie_at: float = float("-inf")
    pcie: tuple[float | None, float | None] = (None, None)
    slow_at: float = float("-inf")
    slow: tuple[Any, ...] = (None,) * 7


class NvmlSource:
    """Reads real GPUs. Construct with `NvmlSource.open(node)`; `read()` is blocking and belongs in a thread."""

    simulated = False

    def __init__(self, node: str, metrics: AgentMetrics | None = None, *, pcie_min_period_s: float = 5.0,
                 slow_period_s: float = SLOW_PERIOD_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.metrics = metrics
        self.pcie_min_period_s = pcie_min_period_s
        self.slow_period_s = slow_period_s
        self.clock = clock
        self.devices: list[_Device] = []
        self.driver_version: str | None = None
        self.cuda_version: str | None = None
        self._events: Any = None
        self._by_uuid: dict[str, _Device] = {}

    @classmethod
    def open(cls, node: str, metrics: AgentMetrics | None = None, **kw: Any) -> NvmlSource:
        """Initialise NVML and enumerate GPUs; NoGpuFound when NVML is absent, broken, or sees no GPU."""
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NoGpuFound(f"NVML did not initialise ({exc}); is the NVIDIA driver installed? "
                             "Use --simulated on a machine without GPUs") from exc
        src = cls(node, metrics, **kw)
        try:
            src._enumerate()
        except Exception:
            src.close()
            raise
        if not src.devices:
            src.close()
            raise NoGpuFound("NVML found no GPU on this machine; use --simulated to run without GPUs")
        return src

    def _enumerate(self) -> None:
        try:
            self.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError:
            self.driver_version = None
        try:
            v = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
            self.cuda_version = f"{v // 1000}.{(v % 1000) // 10}"
        except pynvml.NVMLError:
            self.cuda_version = None
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(pynvml.nvmlDeviceGetUUID(h))
                name = _text(pynvml.nvmlDeviceGetName(h))
            except pynvml.NVMLError as exc:
                # Without a UUID the GPU has no identity the cluster could track; say so loudly and go on.
                log.error("GPU cannot be identified, not sampled", extra={"gpu_index": i, "error": str(exc)})
                self._count_error("identity", exc)
                continue
            dev = _Device(index=i, handle=h, uuid=uuid, name=name, pci_bus_id=None, mem_total_mb=None,
                          power_limit_w=None)
            pci = self._try(dev, "pci", pynvml.nvmlDeviceGetPciInfo)
            dev.pci_bus_id = _text(pci.busId) if pci is not None else None
            mem = self._try(dev, "memory", pynvml.nvmlDeviceGetMemoryInfo)
            dev.mem_total_mb = mem.total / MIB if mem is not None else None
            limit = self._try(dev, "power_limit", pynvml.nvmlDeviceGetEnforcedPowerLimit)
            dev.power_limit_w = limit / 1000.0 if limit is not None else None
            self.devices.append(dev)
            self._by_uuid[uuid] = dev
        self._register_events()
        log.info("NVML ready", extra={"gpus": len(self.devices), "driver": self.driver_version,
                                      "cuda": self.cuda_version})

    def _try(self, dev: _Device, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._field(dev, name, fn, *args)
        except GpuLost:
            return None

    def _register_events(self) -> None:
        try:
            self._events = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            log.warning("NVML event set unavailable: no XID events", extra={"error": str(exc)})
            self._events = None
            return
        for dev in self.devices:
            try:
                pynvml.nvmlDeviceRegisterEvents(dev.handle, pynvml.nvmlEventTypeXidCriticalError, self._events)
            except pynvml.NVMLError as exc:
                log.warning("XID events not supported on this GPU", extra={"gpu_index": dev.index,
                                                                           "error": str(exc)})

    # --- reading ----------------------------------------------------------------------------------------
    def _count_error(self, name: str, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.nvml_errors.labels(name, error_name(exc)).inc()

    def _field(self, dev: _Device, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One NVML read: the value, or None when this GPU cannot give it; GpuLost when the GPU is gone."""
        if dev.unsupported and name in dev.unsupported:
            return None
        try:
            return fn(dev.handle, *args)
        except pynvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code in LOST_ERRORS:
                raise GpuLost(exc) from exc
            if code in STATIC_ERRORS:
                dev.unsupported.add(name)
            self._count_error(name, exc)
            return None

    def poll_xids(self) -> dict[str, list[int]]:
        """XID events waiting in the event set, by GPU UUID; never blocks (timeout 0)."""
        out: dict[str, list[int]] = {}
        if self._events is None:
            return out
        for _ in range(MAX_EVENTS_PER_TICK):
            try:
                data = pynvml.nvmlEventSetWait_v2(self._events, 0)
            except pynvml.NVMLError as exc:
                if getattr(exc, "value", None) != pynvml.NVML_ERROR_TIMEOUT:
                    self._count_error("events", exc)
                break
            if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                continue
            try:
                uuid = _text(pynvml.nvmlDeviceGetUUID(data.device))
            except pynvml.NVMLError:
                continue  # the GPU that raised it is gone; its placeholder says so
            out.setdefault(uuid, []).append(int(data.eventData))
        return out

    def read(self, now: datetime) -> list[TelemetrySample]:
        xids = self.poll_xids()
        return [self._read_device(dev, now, xids.get(dev.uuid, [])) for dev in self.devices]

    def _read_device(self, d: _Device, now: datetime, xids: list[int]) -> TelemetrySample:
        f = self._field
        nv = pynvml
        try:
            util = f(d, "utilization", nv.nvmlDeviceGetUtilizationRates)
            mem = f(d, "memory", nv.nvmlDeviceGetMemoryInfo)
            temp = f(d, "temperature", nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
            mem_temp = self._field_value(d, "mem_temperature", nv.NVML_FI_DEV_MEMORY_TEMP)
            power = f(d, "power", nv.nvmlDeviceGetPowerUsage)
            energy = f(d, "energy", nv.nvmlDeviceGetTotalEnergyConsumption)
            sm = f(d, "sm_clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
            memclk = f(d, "mem_clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM)
            gfx = f(d, "gfx_clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_GRAPHICS)
            pstate = f(d, "pstate", nv.nvmlDeviceGetPerformanceState)
            reasons = f(d, "throttle", nv.nvmlDeviceGetCurrentClocksEventReasons)
            if reasons is None and "throttle" in d.unsupported:  # drivers before 535 only know the old name
                reasons = f(d, "throttle_legacy", nv.nvmlDeviceGetCurrentClocksThrottleReasons)
            fan = f(d, "fan", nv.nvmlDeviceGetFanSpeed)
            tx, rx = self._pcie(d)
            procs = f(d, "processes", nv.nvmlDeviceGetComputeRunningProcesses)
            limit, sbe, dbe, retired, remap, mig, bar1 = self._slow(d)
        except GpuLost as lost:
            d.slow_at = d.pcie_at = float("-inf")  # read everything afresh when it comes back
            return self._placeholder(d, now, lost.nvml_error, xids)
        if not d.healthy:
            log.warning("GPU readable again", extra={"gpu_index": d.index, "gpu_uuid": d.uuid})
        d.healthy, d.error, d.lost_since = True, None, None
        if limit is not None:
            d.power_limit_w = limit / 1000.0
        if mem is not None:
            d.mem_total_mb = mem.total / MIB
        return TelemetrySample(
            time=now, node=self.node, gpu_index=d.index, gpu_uuid=d.uuid, name=d.name, healthy=True,
            util_gpu_pct=util.gpu if util is not None else None,
            util_mem_pct=util.memory if util is not None else None,
            mem_used_mb=mem.used / MIB if mem is not None else None,
            mem_total_mb=mem.total / MIB if mem is not None else None,
            bar1_used_mb=bar1.bar1Used / MIB if bar1 is not None else None,
            bar1_total_mb=bar1.bar1Total / MIB if bar1 is not None else None,
            temp_c=temp, mem_temp_c=mem_temp,
            power_w=power / 1000.0 if power is not None else None,
            power_limit_w=limit / 1000.0 if limit is not None else None,
            energy_mj=energy,
            sm_clock_mhz=sm, mem_clock_mhz=memclk, gfx_clock_mhz=gfx,
            pstate=pstate if pstate is not None and pstate != PSTATE_UNKNOWN else None,
            throttle_reasons=decode_throttle(reasons) if reasons is not None else [],
            fan_pct=fan, ecc_sbe=sbe, ecc_dbe=dbe, pcie_tx_kbps=tx, pcie_rx_kbps=rx,
            retired_pages=retired, remapped_rows=(remap[0] + remap[1]) if remap is not None else None,
            xid_errors=xids,
            processes=[GpuProcess(pid=p.pid, used_mem_mb=p.usedGpuMemory / MIB if p.usedGpuMemory is not None
                                  else None) for p in procs] if procs is not None else None,
            mig_mode=bool(mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE) if mig is not None else None,
            pci_bus_id=d.pci_bus_id,
        )

    def _field_value(self, d: _Device, name: str, field_id: int) -> float | None:
        if name in d.unsupported:
            return None
        values = self._field(d, name, pynvml.nvmlDeviceGetFieldValues, [field_id])
        if values is None:
            return None
        v = values[0]
        if v.nvmlReturn != pynvml.NVML_SUCCESS:
            exc = pynvml.NVMLError(v.nvmlReturn)
            if v.nvmlReturn in LOST_ERRORS:
                raise GpuLost(exc)
            if v.nvmlReturn in STATIC_ERRORS:
                d.unsupported.add(name)
            self._count_error(name, exc)
            return None
        kind = v.valueType
        if kind == pynvml.NVML_VALUE_TYPE_DOUBLE:
            return float(v.value.dVal)
        if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
            return float(v.value.uiVal)
        if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG:
            return float(v.value.ulVal)
        if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
            return float(v.value.ullVal)
        if kind == pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
            return float(v.value.sllVal)
        if kind == pynvml.NVML_VALUE_TYPE_SIGNED_INT:
            return float(v.value.siVal)
        return float(v.value.usVal)

    def _slow(self, d: _Device) -> tuple[Any, ...]:
        t = self.clock()
        if t - d.slow_at >= self.slow_period_s:
            f, nv = self._field, pynvml
            d.slow = (
                f(d, "power_limit", nv.nvmlDeviceGetEnforcedPowerLimit),
                f(d, "ecc_sbe", nv.nvmlDeviceGetTotalEccErrors, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                  nv.NVML_VOLATILE_ECC),
                f(d, "ecc_dbe", nv.nvmlDeviceGetTotalEccErrors, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                  nv.NVML_VOLATILE_ECC),
                self._retired_pages(d),
                f(d, "remapped_rows", nv.nvmlDeviceGetRemappedRows),
                f(d, "mig_mode", nv.nvmlDeviceGetMigMode),
                f(d, "bar1", nv.nvmlDeviceGetBAR1MemoryInfo),
            )
            d.slow_at = t
        return d.slow

    def _pcie(self, d: _Device) -> tuple[float | None, float | None]:
        # nvmlDeviceGetPcieThroughput samples a byte counter for 20 ms per call: at most once per period per GPU,
        # the last measurement (a real one, at most that old) is repeated in between.
        t = self.clock()
        if t - d.pcie_at >= self.pcie_min_period_s:
            d.pcie_at = t
            tx = self._field(d, "pcie_tx", pynvml.nvmlDeviceGetPcieThroughput, pynvml.NVML_PCIE_UTIL_TX_BYTES)
            rx = self._field(d, "pcie_rx", pynvml.nvmlDeviceGetPcieThroughput, pynvml.NVML_PCIE_UTIL_RX_BYTES)
            d.pcie = (float(tx) if tx is not None else None, float(rx) if rx is not None else None)
        return d.pcie

    def _retired_pages(self, d: _Device) -> int | None:
        # Pre-Ampere boards retire pages; Ampere and later remap rows instead and answer NOT_SUPPORTED here.
        sbe = self._field(d, "retired_pages", pynvml.nvmlDeviceGetRetiredPages,
                          pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
        if sbe is None:
            return None
        dbe = self._field(d, "retired_pages", pynvml.nvmlDeviceGetRetiredPages,
                          pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        return len(sbe) + (len(dbe) if dbe is not None else 0)

    def _placeholder(self, d: _Device, now: datetime, exc: BaseException, xids: list[int]) -> TelemetrySample:
        t = self.clock()
        reason = f"{exc} (NVML_ERROR_{error_name(exc).upper()})"
        if d.healthy:
            log.error("GPU lost: reporting it unhealthy, other GPUs keep sampling",
                      extra={"gpu_index": d.index, "gpu_uuid": d.uuid, "error": reason})
            self._count_error("device", exc)
            d.lost_since = t
        d.healthy, d.error = False, reason
        if t - d.last_handle_retry >= HANDLE_RETRY_S:
            # After a GPU reset the old handle stays invalid: look the GPU up again by its UUID.
            d.last_handle_retry = t
            try:
                d.handle = pynvml.nvmlDeviceGetHandleByUUID(d.uuid)
            except pynvml.NVMLError:
                pass
        return TelemetrySample(time=now, node=self.node, gpu_index=d.index, gpu_uuid=d.uuid, name=d.name,
                               healthy=False, error=reason, xid_errors=xids, pci_bus_id=d.pci_bus_id,
                               mem_total_mb=d.mem_total_mb, power_limit_w=d.power_limit_w)

    # --- the rest of the GpuSource protocol ----------------------------------------------------------------
    def inventory(self) -> list[GpuInventory]:
        return [GpuInventory(uuid=d.uuid, index=d.index, name=d.name, mem_total_mb=d.mem_total_mb,
                             pci_bus_id=d.pci_bus_id, power_limit_w=d.power_limit_w, healthy=d.healthy)
                for d in self.devices]

    def attach_job(self, job_id: str, gpu_indices: list[int], workload: Workload, pid: int | None = None) -> None:
        """Real GPUs are loaded by the job itself."""

    def detach_job(self, job_id: str) -> None:
        """Nothing to undo on real GPUs."""

    def close(self) -> None:
        try:
            if self._events is not None:
                pynvml.nvmlEventSetFree(self._events)
                self._events = None
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.warning("NVML shutdown failed", extra={"error": str(exc)})
