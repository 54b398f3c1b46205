"""The NVML shim against a fake NVML: every field read and converted, unsupported fields null, a vanishing GPU
reported unhealthy while the others keep sampling, XID events, throttle reasons decoded."""

from __future__ import annotations

from datetime import UTC, datetime

import pynvml
import pytest

from agent.errors import NoGpuFound
from agent.metrics import AgentMetrics
from agent.nvml import NvmlSource, decode_throttle
from tests.agent.fake_nvml import MIB, FakeDevice, FakeNvml

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def h100s():
    devs = [FakeDevice(0, "GPU-aaaa"), FakeDevice(1, "GPU-bbbb", bus_id="00000000:2A:00.0")]
    with FakeNvml(devs) as fake:
        yield fake


def _open(metrics=None, clock=None) -> NvmlSource:
    return NvmlSource.open("node-a", metrics, pcie_min_period_s=5.0, clock=clock or Clock())


def _errors(metrics: AgentMetrics, field: str, error: str) -> float:
    return metrics.registry.get_sample_value("aether_agent_nvml_errors_total", {"field": field, "error": error}) or 0


def test_healthy_h100_every_field_read_and_converted(h100s):
    src = _open()
    s = src.read(NOW)[0]
    assert (s.node, s.gpu_index, s.gpu_uuid, s.name, s.healthy) == ("node-a", 0, "GPU-aaaa",
                                                                      "NVIDIA H100 80GB HBM3", True)
    assert (s.util_gpu_pct, s.util_mem_pct) == (87, 41)
    assert (s.mem_used_mb, s.mem_total_mb) == (30000, 81559)
    assert (s.bar1_used_mb, s.bar1_total_mb) == (5, 131072)
    assert (s.temp_c, s.mem_temp_c) == (64, 71)
    assert (s.power_w, s.power_limit_w, s.energy_mj) == (512.345, 700.0, 987_654_321)
    assert (s.sm_clock_mhz, s.mem_clock_mhz, s.gfx_clock_mhz, s.pstate) == (1755, 2619, 1755, 0)
    assert s.throttle_reasons == ["power_cap"]
    assert s.fan_pct == 0
    assert (s.ecc_sbe, s.ecc_dbe) == (3, 0)
    assert (s.pcie_tx_kbps, s.pcie_rx_kbps) == (12_000, 250_000)
    assert (s.retired_pages, s.remapped_rows) == (1, 3)
    assert [(p.pid, p.used_mem_mb) for p in s.processes] == [(4242, 29000)]
    assert s.mig_mode is False
    assert s.pci_bus_id == "00000000:18:00.0"
    assert s.xid_errors == [] and s.error is None
    inv = src.inventory()
    assert [(g.uuid, g.index, g.mem_total_mb, g.power_limit_w, g.pci_bus_id) for g in inv] == [
        ("GPU-aaaa", 0, 81559, 700.0, "00000000:18:00.0"), ("GPU-bbbb", 1, 81559, 700.0, "00000000:2A:00.0")]
    assert (src.driver_version, src.cuda_version) == ("550.54.15", "12.4")


def test_unsupported_fields_are_null_and_not_asked_again(h100s):
    dev = h100s.devices[0]
    dev.unsupported |= {"fan", "bar1", "ecc", "retired_pages", "mig_mode", "mem_temperature", "energy", "pcie"}
    dev.processes = [(99, None)]  # WDDM-style "not available" memory
    metrics = AgentMetrics()
    src = _open(metrics)
    s = src.read(NOW)[0]
    assert s.healthy
    for f in ("fan_pct", "bar1_used_mb", "bar1_total_mb", "ecc_sbe", "ecc_dbe", "retired_pages", "mig_mode",
              "mem_temp_c", "energy_mj", "pcie_tx_kbps", "pcie_rx_kbps"):
        assert getattr(s, f) is None, f
    assert s.processes[0].used_mem_mb is None
    assert s.util_gpu_pct == 87 and s.temp_c == 64  # the rest still reads
    fan_calls = dev.calls["fan"]
    src.read(NOW)
    assert dev.calls["fan"] == fan_calls  # NOT_SUPPORTED does not change while the driver is loaded
    assert _errors(metrics, "fan", "not_supported") == 1


def test_transient_error_is_null_for_that_tick_only(h100s):
    dev = h100s.devices[0]
    dev.errors["temperature"] = pynvml.NVML_ERROR_UNKNOWN
    metrics = AgentMetrics()
    src = _open(metrics)
    assert src.read(NOW)[0].temp_c is None
    del dev.errors["temperature"]
    assert src.read(NOW)[0].temp_c == 64
    assert _errors(metrics, "temperature", "unknown") == 1


def test_vanishing_gpu_becomes_placeholder_and_others_keep_sampling(h100s):
    metrics = AgentMetrics()
    src = _open(metrics)
    assert all(s.healthy for s in src.read(NOW))
    h100s.devices[0].lost = True
    lost, other = src.read(NOW)
    assert (lost.healthy, lost.gpu_uuid, lost.gpu_index) == (False, "GPU-aaaa", 0)
    assert "GPU is lost" in lost.error and "GPU_IS_LOST" in lost.error
    assert lost.util_gpu_pct is None and lost.temp_c is None  # nothing invented for a GPU we cannot read
    assert other.healthy and other.util_gpu_pct == 87
    assert [g.healthy for g in src.inventory()] == [False, True]
    src.read(NOW)
    assert _errors(metrics, "device", "gpu_is_lost") == 1  # counted once per loss, not once per tick
    h100s.devices[0].lost = False
    assert src.read(NOW)[0].healthy


def test_xid_events_reach_their_gpu_once(h100s):
    src = _open()
    h100s.raise_xid(h100s.devices[1], 79)
    h100s.raise_xid(h100s.devices[1], 48)
    first = src.read(NOW)
    assert [s.xid_errors for s in first] == [[], [79, 48]]
    assert [s.xid_errors for s in src.read(NOW)] == [[], []]


def test_pcie_throughput_read_at_most_once_per_period(h100s):
    clock = Clock()
    src = _open(clock=clock)
    dev = h100s.devices[0]
    src.read(NOW)
    dev.pcie_rx_kbps = 1
    clock.t += 1.0
    assert src.read(NOW)[0].pcie_rx_kbps == 250_000  # the last real measurement, 1 s old
    assert dev.calls["pcie"] == 2  # tx + rx, once
    clock.t += 5.0
    assert src.read(NOW)[0].pcie_rx_kbps == 1


def test_slow_counters_read_every_slow_period(h100s):
    clock = Clock()
    src = _open(clock=clock)
    dev = h100s.devices[0]
    assert src.read(NOW)[0].ecc_dbe == 0
    dev.ecc_dbe, dev.limit_mw, dev.util_gpu = 2, 400_000, 5
    clock.t += 1.0
    s = src.read(NOW)[0]
    assert (s.ecc_dbe, s.power_limit_w, s.util_gpu_pct) == (0, 700.0, 5)  # fast fields every tick
    clock.t += 10.0
    s = src.read(NOW)[0]
    assert (s.ecc_dbe, s.power_limit_w) == (2, 400.0)


def test_legacy_throttle_call_when_new_one_missing(h100s):
    dev = h100s.devices[0]
    dev.errors["throttle"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    dev.throttle_mask = 0x20 | 0x40
    assert _open().read(NOW)[0].throttle_reasons == ["sw_thermal", "hw_thermal"]


@pytest.mark.parametrize(("mask", "names"), [
    (0x0, []),
    (0x1, ["idle"]),
    (0x4 | 0x20, ["power_cap", "sw_thermal"]),
    (0x8 | 0x40 | 0x80, ["hw_slowdown", "hw_thermal", "hw_power_brake"]),
    (0x2 | 0x10 | 0x100, ["applications_clocks", "sync_boost", "display_clocks"]),
    (0x1000, ["unknown_0x1000"]),
])
def test_throttle_decoding(mask, names):
    assert decode_throttle(mask) == names


def test_no_nvml_library_is_a_clear_error():
    with FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), pytest.raises(NoGpuFound) as err:
        NvmlSource.open("n")
    assert "--simulated" in err.value.message and err.value.code == "NO_GPU_FOUND"


def test_no_gpu_is_a_clear_error():
    with FakeNvml([]) as fake, pytest.raises(NoGpuFound, match="found no GPU"):
        NvmlSource.open("n")
    assert not fake.initialised  # NVML shut down again


def test_gpu_lost_before_start_is_skipped_not_fatal():
    devs = [FakeDevice(0, "GPU-a", lost=True), FakeDevice(1, "GPU-b")]
    with FakeNvml(devs):
        src = NvmlSource.open("n")
        assert [s.gpu_uuid for s in src.read(NOW)] == ["GPU-b"]


def test_units(h100s):
    dev = h100s.devices[0]
    dev.mem_used = 1536 * MIB
    dev.power_mw = 1500
    s = _open().read(NOW)[0]
    assert s.mem_used_mb == 1536 and s.power_w == 1.5
