"""A scripted NVML: replaces `pynvml`'s functions (the agent's hardware boundary) with fake devices that answer
with pynvml's own structures, raise NVMLError_NotSupported for chosen fields, fall off the bus, and queue XIDs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

MIB = 1024 * 1024

# Fields a FakeDevice can be told to refuse (NOT_SUPPORTED) or fail (any NVML error code), by these names.
FIELDS = ("utilization", "memory", "bar1", "temperature", "mem_temperature", "power", "power_limit", "energy",
          "sm_clock", "mem_clock", "gfx_clock", "pstate", "throttle", "throttle_legacy", "fan", "ecc", "pcie",
          "retired_pages", "remapped_rows", "processes", "mig_mode", "events", "pci")


@dataclass(eq=False)
class FakeDevice:
    """An H100 where every field reads, unless told otherwise."""

    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    bus_id: str = "00000000:18:00.0"
    util_gpu: int = 87
    util_mem: int = 41
    mem_total: int = 81559 * MIB
    mem_used: int = 30000 * MIB
    bar1_total: int = 131072 * MIB
    bar1_used: int = 5 * MIB
    temp: int = 64
    mem_temp: int = 71
    power_mw: int = 512_345
    limit_mw: int = 700_000
    energy_mj: int = 987_654_321
    sm_clock: int = 1755
    mem_clock: int = 2619
    gfx_clock: int = 1755
    pstate: int = 0
    throttle_mask: int = 0x4  # power cap
    fan: int = 0
    ecc_sbe: int = 3
    ecc_dbe: int = 0
    pcie_tx_kbps: int = 12_000
    pcie_rx_kbps: int = 250_000
    retired_sbe: list[int] = field(default_factory=lambda: [0x1000])
    retired_dbe: list[int] = field(default_factory=list)
    remapped: tuple[int, int, int, int] = (2, 1, 0, 0)
    processes: list[tuple[int, int | None]] = field(default_factory=lambda: [(4242, 29000 * MIB)])
    mig: int = 0
    unsupported: set[str] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)  # field -> NVML error code raised when read
    lost: bool = False
    calls: dict[str, int] = field(default_factory=dict)

    def check(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if name in self.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if name in self.errors:
            raise pynvml.NVMLError(self.errors[name])


class FakeNvml:
    """Install with `install()` (returns an undo function) or as a context manager."""

    def __init__(self, devices: list[FakeDevice], *, driver: str = "550.54.15", cuda: int = 12040,
                 init_error: int | None = None) -> None:
        self.devices = devices
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error
        self.xids: list[tuple[FakeDevice, int]] = []
        self.initialised = False
        self._saved: dict[str, Any] = {}

    # --- scripting ----------------------------------------------------------------------------------------
    def raise_xid(self, dev: FakeDevice, code: int) -> None:
        self.xids.append((dev, code))

    # --- installing -----------------------------------------------------------------------------------------
    def functions(self) -> dict[str, Callable[..., Any]]:
        nv = pynvml

        def dev_fn(name: str, value: Callable[[FakeDevice], Any]) -> Callable[..., Any]:
            def fn(handle: FakeDevice, *args: Any) -> Any:
                handle.check(name)
                return value(handle, *args)
            return fn

        def clock_fn(handle: FakeDevice, kind: int) -> int:
            name = {nv.NVML_CLOCK_SM: "sm_clock", nv.NVML_CLOCK_MEM: "mem_clock",
                    nv.NVML_CLOCK_GRAPHICS: "gfx_clock"}[kind]
            handle.check(name)
            return getattr(handle, name)

        def field_values(handle: FakeDevice, ids: list[int]) -> Any:
            handle.check("field_values")  # the call itself; each field answers in its own nvmlReturn
            arr = (nv.c_nvmlFieldValue_t * len(ids))()
            for i, fid in enumerate(ids):
                arr[i].fieldId = fid
                if fid == nv.NVML_FI_DEV_MEMORY_TEMP and not handle.lost:
                    if "mem_temperature" in handle.unsupported:
                        arr[i].nvmlReturn = nv.NVML_ERROR_NOT_SUPPORTED
                    else:
                        arr[i].nvmlReturn = nv.NVML_SUCCESS
                        arr[i].valueType = nv.NVML_VALUE_TYPE_UNSIGNED_INT
                        arr[i].value.uiVal = handle.mem_temp
                else:
                    arr[i].nvmlReturn = nv.NVML_ERROR_NOT_SUPPORTED
            return arr

        def ecc(handle: FakeDevice, kind: int, counter: int) -> int:
            handle.check("ecc")
            return handle.ecc_sbe if kind == nv.NVML_MEMORY_ERROR_TYPE_CORRECTED else handle.ecc_dbe

        def pcie(handle: FakeDevice, counter: int) -> int:
            handle.check("pcie")
            return handle.pcie_tx_kbps if counter == nv.NVML_PCIE_UTIL_TX_BYTES else handle.pcie_rx_kbps

        def retired(handle: FakeDevice, cause: int) -> list[int]:
            handle.check("retired_pages")
            return list(handle.retired_sbe if cause == nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
                        else handle.retired_dbe)

        def procs(d: FakeDevice) -> list[Any]:
            return [nv.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 0xFFFFFFFF,
                                           "computeInstanceId": 0xFFFFFFFF}) for pid, used in d.processes]

        def pci(d: FakeDevice) -> Any:
            info = nv.nvmlPciInfo_t()
            info.busId = d.bus_id.encode()
            return info

        def init() -> None:
            if self.init_error is not None:
                raise nv.NVMLError(self.init_error)
            self.initialised = True

        def shutdown() -> None:
            self.initialised = False

        def handle_by_index(i: int) -> FakeDevice:
            if not 0 <= i < len(self.devices):
                raise nv.NVMLError(nv.NVML_ERROR_INVALID_ARGUMENT)
            d = self.devices[i]
            if d.lost:
                raise nv.NVMLError(nv.NVML_ERROR_GPU_IS_LOST)
            return d

        def handle_by_uuid(uuid: str) -> FakeDevice:
            for d in self.devices:
                if d.uuid == uuid and not d.lost:
                    return d
            raise nv.NVMLError(nv.NVML_ERROR_NOT_FOUND)

        def uuid_of(handle: FakeDevice) -> str:
            if handle.lost:
                raise nv.NVMLError(nv.NVML_ERROR_GPU_IS_LOST)
            return handle.uuid

        def name_of(handle: FakeDevice) -> str:
            if handle.lost:
                raise nv.NVMLError(nv.NVML_ERROR_GPU_IS_LOST)
            return handle.name

        def register(handle: FakeDevice, types: int, event_set: Any) -> None:
            handle.check("events")

        def wait(event_set: Any, timeout_ms: int) -> Any:
            if not self.xids:
                raise nv.NVMLError(nv.NVML_ERROR_TIMEOUT)
            dev, code = self.xids.pop(0)
            # pynvml gives a c_nvmlEventData_t whose `device` the agent only passes back to nvmlDeviceGetUUID.
            return _EventData(dev, nv.nvmlEventTypeXidCriticalError, code)

        return {
            "nvmlInit": init,
            "nvmlShutdown": shutdown,
            "nvmlSystemGetDriverVersion": lambda: self.driver,
            "nvmlSystemGetCudaDriverVersion_v2": lambda: self.cuda,
            "nvmlDeviceGetCount": lambda: len(self.devices),
            "nvmlDeviceGetHandleByIndex": handle_by_index,
            "nvmlDeviceGetHandleByUUID": handle_by_uuid,
            "nvmlDeviceGetUUID": uuid_of,
            "nvmlDeviceGetName": name_of,
            "nvmlDeviceGetPciInfo": dev_fn("pci", pci),
            "nvmlDeviceGetMemoryInfo": dev_fn("memory", lambda d: nv.c_nvmlMemory_t(
                total=d.mem_total, free=d.mem_total - d.mem_used, used=d.mem_used)),
            "nvmlDeviceGetBAR1MemoryInfo": dev_fn("bar1", lambda d: nv.c_nvmlBAR1Memory_t(
                bar1Total=d.bar1_total, bar1Free=d.bar1_total - d.bar1_used, bar1Used=d.bar1_used)),
            "nvmlDeviceGetUtilizationRates": dev_fn("utilization", lambda d: nv.c_nvmlUtilization_t(
                gpu=d.util_gpu, memory=d.util_mem)),
            "nvmlDeviceGetTemperature": dev_fn("temperature", lambda d, sensor: d.temp),
            "nvmlDeviceGetFieldValues": field_values,
            "nvmlDeviceGetPowerUsage": dev_fn("power", lambda d: d.power_mw),
            "nvmlDeviceGetEnforcedPowerLimit": dev_fn("power_limit", lambda d: d.limit_mw),
            "nvmlDeviceGetTotalEnergyConsumption": dev_fn("energy", lambda d: d.energy_mj),
            "nvmlDeviceGetClockInfo": clock_fn,
            "nvmlDeviceGetPerformanceState": dev_fn("pstate", lambda d: d.pstate),
            "nvmlDeviceGetCurrentClocksEventReasons": dev_fn("throttle", lambda d: d.throttle_mask),
            "nvmlDeviceGetCurrentClocksThrottleReasons": dev_fn("throttle_legacy", lambda d: d.throttle_mask),
            "nvmlDeviceGetFanSpeed": dev_fn("fan", lambda d: d.fan),
            "nvmlDeviceGetTotalEccErrors": ecc,
            "nvmlDeviceGetPcieThroughput": pcie,
            "nvmlDeviceGetRetiredPages": retired,
            "nvmlDeviceGetRemappedRows": dev_fn("remapped_rows", lambda d: d.remapped),
            "nvmlDeviceGetComputeRunningProcesses": dev_fn("processes", procs),
            "nvmlDeviceGetMigMode": dev_fn("mig_mode", lambda d: [d.mig, d.mig]),
            "nvmlEventSetCreate": lambda: object(),
            "nvmlDeviceRegisterEvents": register,
            "nvmlEventSetWait_v2": wait,
            "nvmlEventSetFree": lambda event_set: None,
        }

    def install(self) -> Callable[[], None]:
        for name, fn in self.functions().items():
            self._saved[name] = getattr(pynvml, name)
            setattr(pynvml, name, fn)
        return self.uninstall

    def uninstall(self) -> None:
        for name, fn in self._saved.items():
            setattr(pynvml, name, fn)
        self._saved.clear()

    def __enter__(self) -> FakeNvml:
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()


class _EventData:
    """What nvmlEventSetWait_v2 returns: the device handle, event type and data (the XID code)."""

    def __init__(self, device: FakeDevice, event_type: int, event_data: int) -> None:
        self.device = device
        self.eventType = event_type
        self.eventData = event_data
