"""The simulated GPU behaves like one: load raises power and (with lag) temperature, limits bring throttling,
faults show up as NVML would show them, and a seed makes it repeatable."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.errors import InvalidFault
from agent.sim import SimSource, sim_uuid
from services import gpu_specs
from services.gpu_physics import GpuPhysics, Workload, speed_factor, workload_for
from services.schemas import FaultCommand

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(src: SimSource, seconds: float, dt: float = 1.0):
    out = None
    for _ in range(int(seconds / dt)):
        out = src.step(dt, NOW)
    return out


def test_idle_gpu_reads_like_an_idle_board():
    s = SimSource("n", 1, "H100-80GB", seed=1).step(1.0, NOW)[0]
    spec = gpu_specs.spec("H100-80GB")
    assert s.healthy and s.util_gpu_pct == 0 and s.throttle_reasons == ["idle"] and s.pstate == 8
    assert s.mem_total_mb == spec.mem_total_mb and s.power_limit_w == spec.power_limit_w
    assert spec.idle_power_w * 0.9 <= s.power_w <= spec.idle_power_w * 1.1
    assert 30 <= s.temp_c <= 40
    assert s.fan_pct is None  # a passively cooled board has no fan reading
    assert s.gpu_uuid == sim_uuid("n", 0)  # stable across restarts


def test_load_raises_power_at_once_and_temperature_with_lag():
    src = SimSource("n", 2, "A100-80GB", seed=2)
    idle = run(src, 5)
    src.attach_job("j", [0], workload_for("batch", 20_000))
    first = src.step(1.0, NOW)
    later = run(src, 120)
    assert first[0].util_gpu_pct > 75 and first[0].mem_used_mb >= 20_000
    assert first[0].power_w > idle[0].power_w * 3  # power follows utilisation within a tick
    assert first[0].temp_c - idle[0].temp_c < 5  # temperature lags behind
    assert later[0].temp_c > idle[0].temp_c + 20
    assert later[1].util_gpu_pct == 0 and abs(later[1].temp_c - idle[1].temp_c) < 2  # the other GPU is untouched
    src.detach_job("j")
    cooled = run(src, 200)
    assert cooled[0].util_gpu_pct == 0 and cooled[0].temp_c < later[0].temp_c - 15


def test_training_hits_the_power_limit_and_is_power_capped():
    src = SimSource("n", 1, "H100-80GB", seed=3)
    src.attach_job("j", [0], workload_for("training", 60_000))
    s = run(src, 30)[0]
    spec = gpu_specs.spec("H100-80GB")
    assert s.power_w >= spec.power_limit_w * 0.97 and s.power_w <= spec.power_limit_w
    assert "power_cap" in s.throttle_reasons
    assert s.sm_clock_mhz < spec.max_sm_clock_mhz


def test_overheat_brings_thermal_throttling_and_lower_clocks():
    src = SimSource("n", 1, "H100-80GB", seed=4)
    src.attach_job("j", [0], workload_for("batch", 1000))
    cool = run(src, 150)[0]
    src.apply_fault(FaultCommand(fault="overheat", gpu_index=0, value=25))
    hot = run(src, 200)[0]
    spec = gpu_specs.spec("H100-80GB")
    assert "sw_thermal" not in cool.throttle_reasons
    assert "sw_thermal" in hot.throttle_reasons
    assert hot.temp_c >= spec.slowdown_temp_c - 3
    assert hot.sm_clock_mhz < cool.sm_clock_mhz and hot.power_w < cool.power_w


def test_ecc_xid_and_fall_off_the_bus():
    src = SimSource("n", 2, "H100-80GB", seed=5)
    src.apply_fault(FaultCommand(fault="ecc_sbe", gpu_index=0, count=3))
    src.apply_fault(FaultCommand(fault="ecc_dbe", gpu_index=0))
    src.apply_fault(FaultCommand(fault="xid", gpu_index=1, xid=13))
    s0, s1 = src.step(1.0, NOW)
    assert (s0.ecc_sbe, s0.ecc_dbe, s0.remapped_rows, s0.xid_errors) == (3, 1, 1, [48])
    assert s1.xid_errors == [13]
    assert [s.xid_errors for s in src.step(1.0, NOW)] == [[], []]  # each event reported once
    src.apply_fault(FaultCommand(fault="fall_off_bus", gpu_index=1))
    s0, s1 = src.step(1.0, NOW)
    assert s0.healthy and not s1.healthy and "GPU_IS_LOST" in s1.error and s1.xid_errors == [79]
    assert s1.util_gpu_pct is None and s1.temp_c is None
    assert [g.healthy for g in src.inventory()] == [True, False]
    src.apply_fault(FaultCommand(fault="clear", gpu_index=1))
    assert src.step(1.0, NOW)[1].healthy


def test_stuck_mem_fill_silence_and_drift():
    src = SimSource("n", 3, "L4", seed=6)
    src.apply_fault(FaultCommand(fault="stuck_util", gpu_index=0))
    src.apply_fault(FaultCommand(fault="mem_fill", gpu_index=1, value=98))
    src.apply_fault(FaultCommand(fault="silence", gpu_index=2))
    samples = src.step(1.0, NOW)
    assert [s.gpu_index for s in samples] == [0, 1]  # the silenced GPU sends nothing
    assert samples[0].util_gpu_pct == 100 and samples[0].power_w > 50
    assert samples[1].mem_used_mb == pytest.approx(0.98 * gpu_specs.spec("L4").mem_total_mb, rel=1e-3)
    src.apply_fault(FaultCommand(fault="clear"))
    base = run(src, 10)[1].temp_c
    src.apply_fault(FaultCommand(fault="drift", gpu_index=1, metric="temp_c", rate_per_s=0.05))
    drifted = run(src, 100)[1].temp_c
    assert drifted - base == pytest.approx(5.0, abs=1.0)


def test_fault_duration_clears_by_itself():
    clock = Clock()
    src = SimSource("n", 1, "H100-80GB", seed=7, clock=clock)
    src.apply_fault(FaultCommand(fault="stuck_util", gpu_index=0, duration_s=10))
    clock.t += 1
    assert src.read(NOW)[0].util_gpu_pct == 100
    assert src.active_faults() == {0: ["stuck_util"]}
    clock.t += 10
    assert src.read(NOW)[0].util_gpu_pct == 0
    assert src.active_faults() == {}


def test_fault_on_missing_gpu_is_refused():
    with pytest.raises(InvalidFault, match="gpu_index 9"):
        SimSource("n", 2).apply_fault(FaultCommand(fault="xid", gpu_index=9))


def test_same_seed_same_readings():
    def trace(seed):
        src = SimSource("n", 2, "RTX-4090", seed=seed)
        src.attach_job("j", [0, 1], workload_for("inference", 4000))
        return [(s.util_gpu_pct, s.power_w, s.temp_c, s.fan_pct) for _ in range(20) for s in src.step(0.5, NOW)]

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)
    assert trace(11)[-1][3] is not None  # a board with a fan reports it


def test_large_steps_stay_stable_and_co_location_shares_the_gpu():
    ph = GpuPhysics(gpu_specs.spec("A100-80GB"), seed=1, noise=False)
    wl = [Workload(70, 10_000), Workload(70, 10_000)]
    for _ in range(5):
        st = ph.step(600.0, wl)
    assert 30 < st.temp_c < gpu_specs.spec("A100-80GB").shutdown_temp_c
    assert st.util_gpu_pct == 100
    assert speed_factor(st, wl) == pytest.approx(st.perf_factor * 100 / 140)
    assert speed_factor(st, wl[:1]) > speed_factor(st, wl)
