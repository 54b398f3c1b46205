"""GPU physics model: steps one simulated GPU forward in time (utilisation, memory, power, temperature, clocks,
throttling, ECC/XID faults). Shared by the agent's simulated source and the AI core's cluster simulator."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from services.gpu_specs import GpuSpec

# Throttle ("clocks event") reason names: the contract between NVML decoding, the simulator, alerts and placement.
IDLE = "idle"
APPLICATIONS_CLOCKS = "applications_clocks"
POWER_CAP = "power_cap"
HW_SLOWDOWN = "hw_slowdown"
SYNC_BOOST = "sync_boost"
SW_THERMAL = "sw_thermal"
HW_THERMAL = "hw_thermal"
HW_POWER_BRAKE = "hw_power_brake"
DISPLAY_CLOCKS = "display_clocks"
BOARD_LIMIT = "board_limit"
RELIABILITY = "reliability"
THERMAL_THROTTLE = frozenset({SW_THERMAL, HW_THERMAL})
POWER_THROTTLE = frozenset({POWER_CAP, HW_POWER_BRAKE})

# Metrics a `drift` fault may bend (a sensor or a part slowly going wrong, below any fixed threshold).
DRIFT_METRICS = ("temp_c", "power_w", "util_gpu_pct", "mem_used_mb", "sm_clock_mhz", "fan_pct")

XID_DBE = 48  # "DBE (Double Bit Error) ECC Error"
XID_FALLEN_OFF_BUS = 79  # "GPU has fallen off the bus"

THERMAL_TAU_S = 25.0  # heat-sink time constant: temperature covers 63 % of a step change in this time
POWER_EXPONENT = 2.5  # dynamic power ~ f * V^2 and V rises with f: about f^2.5 over the DVFS range
MIN_CLOCK_FACTOR = 0.25  # the driver never clocks a busy GPU below about a quarter of its boost clock
IDLE_SM_CLOCK_MHZ = 345.0
CLOCK_STEP_MHZ = 15.0  # NVIDIA clocks move in 15 MHz bins
MEM_BASE_MB = 4.0  # driver reservation NVML shows on an idle board


@dataclass(frozen=True, slots=True)
class Workload:
    """What one job asks of a GPU."""

    util_pct: float  # SM utilisation the job reaches alone on the GPU at full clocks
    mem_mb: float  # device memory it holds
    power_intensity: float = 1.0  # dynamic power at 100 % util, relative to (power limit - idle); > 1 is capped
    mem_util_ratio: float = 0.5  # memory-controller utilisation per unit of SM utilisation


# Typical behaviour of each job type (util %, power intensity, memory-controller ratio).
JOB_TYPE_PROFILES: dict[str, tuple[float, float, float]] = {
    "training": (97.0, 1.15, 0.60),  # dense matmuls: hits the power limit on every board
    "inference": (60.0, 0.75, 0.45),
    "batch": (85.0, 0.95, 0.50),
    "interactive": (25.0, 0.60, 0.30),
}


def workload_for(job_type: str, mem_mb: float, util_pct: float | None = None) -> Workload:
    """The workload of a job of `job_type`, with its memory and (when the spec gives one) its expected util."""
    util, intensity, mem_ratio = JOB_TYPE_PROFILES.get(job_type, JOB_TYPE_PROFILES["batch"])
    return Workload(util_pct=util if util_pct is None else float(util_pct), mem_mb=float(mem_mb),
                    power_intensity=intensity, mem_util_ratio=mem_ratio)


@dataclass(slots=True)
class GpuFaults:
    """Injected faults. `clear()` returns the GPU to health (a lost GPU comes back, as after a reset)."""

    lost: bool = False  # fallen off the bus: NVML answers GPU_IS_LOST, the agent reports a placeholder
    stuck_util_pct: float | None = None  # utilisation pinned (a hung kernel), whatever runs
    overheat_c: float = 0.0  # extra heat at the sensor (failed fan, blocked airflow)
    mem_fill_pct: float | None = None  # memory used pinned to this share of the total (a leak)
    silent: bool = False  # the GPU's samples stop (telemetry goes stale) while the agent lives
    drift_rate: dict[str, float] = field(default_factory=dict)  # metric -> units per second
    drift_offset: dict[str, float] = field(default_factory=dict)

    def clear(self) -> None:
        self.lost = False
        self.stuck_util_pct = None
        self.overheat_c = 0.0
        self.mem_fill_pct = None
        self.silent = False
        self.drift_rate.clear()
        self.drift_offset.clear()

    @property
    def active(self) -> list[str]:
        names = []
        if self.lost:
            names.append("fall_off_bus")
        if self.stuck_util_pct is not None:
            names.append("stuck_util")
        if self.overheat_c:
            names.append("overheat")
        if self.mem_fill_pct is not None:
            names.append("mem_fill")
        if self.silent:
            names.append("silence")
        names.extend(f"drift:{m}" for m in self.drift_rate)
        return names


@dataclass(slots=True)
class GpuState:
    """What the GPU's sensors read after a step (drift applied). `perf_factor` is the share of full-clock
    throughput the GPU delivers now (1.0 = boost clock), for simulators that advance job progress."""

    time_s: float = 0.0
    healthy: bool = True
    util_gpu_pct: float = 0.0
    util_mem_pct: float = 0.0
    mem_used_mb: float = 0.0
    mem_total_mb: float = 0.0
    temp_c: float = 0.0
    mem_temp_c: float | None = None
    power_w: float = 0.0
    power_limit_w: float = 0.0
    sm_clock_mhz: float = 0.0
    gfx_clock_mhz: float = 0.0
    mem_clock_mhz: float = 0.0
    pstate: int = 8
    fan_pct: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    energy_mj: float = 0.0
    ecc_sbe: int = 0
    ecc_dbe: int = 0
    retired_pages: int = 0
    remapped_rows: int = 0
    pcie_tx_kbps: float = 0.0
    pcie_rx_kbps: float = 0.0
    perf_factor: float = 1.0


def contention_share(workloads: Sequence[Workload]) -> float:
    """Share of its solo speed each co-located job gets when their utilisations add up past 100 %."""
    demand = sum(w.util_pct for w in workloads)
    return 1.0 if demand <= 100.0 else 100.0 / demand


def speed_factor(state: GpuState, workloads: Sequence[Workload]) -> float:
    """Speed of each job on this GPU relative to running alone at boost clock (throttling x contention x
    memory pressure). A simulator advances a job by `dt * speed_factor`."""
    total_mem = sum(w.mem_mb for w in workloads)
    mem_penalty = 1.0 if total_mem <= state.mem_total_mb or not state.mem_total_mb else 0.2  # paging/OOM retries
    return state.perf_factor * contention_share(workloads) * mem_penalty


class GpuPhysics:
    """One GPU. Call `step(dt, workloads)` to advance `dt` seconds; read `state`. Deterministic for a seed."""

    __slots__ = ("spec", "ambient_c", "power_limit_w", "noise", "faults", "state", "_rng", "_temp", "_thermal_cap",
                 "_xids", "_r_th", "_hbm", "_tau_s", "_alpha_cache")

    def __init__(self, spec: GpuSpec, *, ambient_c: float = 30.0, seed: int = 0, noise: bool = True,
                 power_limit_w: float | None = None, thermal_tau_s: float = THERMAL_TAU_S) -> None:
        self.spec = spec
        self.ambient_c = ambient_c
        self.power_limit_w = power_limit_w or spec.power_limit_w
        self.noise = noise
        self.faults = GpuFaults()
        self._rng = random.Random(seed)
        self._tau_s = thermal_tau_s
        self._alpha_cache: tuple[float, float] = (-1.0, 0.0)
        # Thermal resistance chosen so a board at its power limit in a 30 C room settles 6 C under slowdown:
        # well-cooled boards only throttle thermally when cooling fails or the room is hot.
        self._r_th = (spec.slowdown_temp_c - 6.0 - 30.0) / spec.power_limit_w
        self._hbm = spec.mem_bandwidth_gbps >= 1500  # HBM boards report memory temperature, keep memory clocked
        self._temp = ambient_c + self._r_th * spec.idle_power_w
        self._thermal_cap = 1.0
        self._xids: list[int] = []
        self.state = GpuState(mem_total_mb=float(spec.mem_total_mb), power_limit_w=self.power_limit_w,
                              temp_c=round(self._temp, 1), mem_used_mb=MEM_BASE_MB)

    # --- faults -------------------------------------------------------------------------------------------
    def add_ecc(self, sbe: int = 0, dbe: int = 0) -> None:
        """Corrected (single-bit) and uncorrected (double-bit) errors; a DBE retires a page / remaps a row
        and raises XID 48, as the driver does."""
        self.state.ecc_sbe += sbe
        self.state.ecc_dbe += dbe
        if dbe:
            self.state.retired_pages += dbe
            self.state.remapped_rows += dbe
            self._xids.extend([XID_DBE] * dbe)

    def add_xid(self, code: int) -> None:
        self._xids.append(int(code))

    def fall_off_bus(self) -> None:
        self.faults.lost = True
        self._xids.append(XID_FALLEN_OFF_BUS)

    def drain_xids(self) -> list[int]:
        """XID events since the last call (each reported once)."""
        out, self._xids = self._xids, []
        return out

    # --- dynamics -----------------------------------------------------------------------------------------
    def _alpha(self, dt: float) -> float:
        # exp() once per distinct dt: the agent steps with a constant interval.
        cached_dt, alpha = self._alpha_cache
        if cached_dt != dt:
            alpha = 1.0 - math.exp(-dt / self._tau_s)
            self._alpha_cache = (dt, alpha)
        return alpha

    def step(self, dt: float, workloads: Iterable[Workload] = ()) -> GpuState:
        """Advance `dt` seconds (any size: temperature is integrated exactly, so large steps stay stable)."""
        if dt <= 0:
            return self.state
        spec, f, st = self.spec, self.faults, self.state
        rng = self._rng
        wl = workloads if isinstance(workloads, (list, tuple)) else list(workloads)

        demand = 0.0
        weighted_power = 0.0
        mem_ratio = 0.0
        mem_mb = 0.0
        for w in wl:
            demand += w.util_pct
            weighted_power += w.util_pct * w.power_intensity
            mem_ratio += w.util_pct * w.mem_util_ratio
            mem_mb += w.mem_mb
        if demand > 100.0:  # co-located jobs share the SMs: scale to a full GPU
            scale = 100.0 / demand
            weighted_power *= scale
            mem_ratio *= scale
            demand = 100.0
        if f.stuck_util_pct is not None:
            demand = f.stuck_util_pct
            weighted_power = max(weighted_power, demand)  # a spinning kernel burns power like real work
            mem_ratio = max(mem_ratio, demand * 0.1)
        busy = demand > 0.0

        # Power the work would draw at boost clock; the power limit caps it by lowering clocks.
        idle_w = spec.idle_power_w
        dyn_room = max(self.power_limit_w - idle_w, 1.0)
        dyn_full = dyn_room * weighted_power / 100.0
        f_power = 1.0
        if dyn_full > dyn_room:
            f_power = max(MIN_CLOCK_FACTOR, (dyn_room / dyn_full) ** (1.0 / POWER_EXPONENT))

        # Thermal controller: the driver steps clocks down while above the slowdown temperature, back up below.
        slow = spec.slowdown_temp_c
        if self._temp > slow:
            self._thermal_cap = max(MIN_CLOCK_FACTOR, self._thermal_cap - 0.02 * (self._temp - slow + 1.0) * dt)
        elif self._temp < slow - 2.0:
            self._thermal_cap = min(1.0, self._thermal_cap + 0.2 * dt)  # clocks come back within seconds
        hw_thermal = self._temp >= spec.shutdown_temp_c - 2.0
        clock = min(f_power, self._thermal_cap) if busy else 1.0
        if hw_thermal:
            clock = min(clock, 0.5)  # hardware slowdown halves clocks near the shutdown temperature

        power = idle_w + dyn_full * clock ** POWER_EXPONENT if busy else idle_w
        if self.noise:
            power *= 1.0 + rng.gauss(0.0, 0.01)
        power = min(max(power, idle_w * 0.9), self.power_limit_w)

        # Temperature follows power with first-order lag toward ambient + R_th * P (+ injected heat).
        target = self.ambient_c + self._r_th * power + f.overheat_c
        self._temp += (target - self._temp) * self._alpha(dt)
        self._temp = min(self._temp, spec.shutdown_temp_c + 3.0)

        reasons: list[str] = []
        if not busy:
            reasons.append(IDLE)
        elif f_power < 1.0 and f_power <= self._thermal_cap + 1e-9:
            reasons.append(POWER_CAP)
        if self._thermal_cap < 1.0:  # the clock ceiling is lowered, busy or not (as NVML reports it)
            reasons.append(SW_THERMAL)
        if hw_thermal:
            reasons.append(HW_THERMAL)

        util = demand
        if self.noise and busy and f.stuck_util_pct is None:
            util = min(100.0, max(0.0, util + rng.gauss(0.0, 1.0)))
        sm = IDLE_SM_CLOCK_MHZ if not busy else max(IDLE_SM_CLOCK_MHZ,
                                                     round(spec.max_sm_clock_mhz * clock / CLOCK_STEP_MHZ)
                                                     * CLOCK_STEP_MHZ)
        mem_used = MEM_BASE_MB + mem_mb
        if f.mem_fill_pct is not None:
            mem_used = spec.mem_total_mb * f.mem_fill_pct / 100.0
        mem_used = min(mem_used, float(spec.mem_total_mb))

        st.time_s += dt
        st.healthy = not f.lost
        st.util_gpu_pct = round(util, 1)
        st.util_mem_pct = round(min(100.0, mem_ratio), 1)
        st.mem_used_mb = round(mem_used, 1)
        st.temp_c = round(self._temp, 1)
        st.mem_temp_c = round(self._temp + 2.0 + 6.0 * demand / 100.0, 1) if self._hbm else None
        st.power_w = round(power, 2)
        st.power_limit_w = self.power_limit_w
        st.sm_clock_mhz = sm
        st.gfx_clock_mhz = sm
        st.mem_clock_mhz = float(spec.max_mem_clock_mhz if (busy or self._hbm) else 405)
        st.pstate = 0 if busy else 8
        st.fan_pct = (round(min(100.0, max(30.0, 30.0 + 70.0 * (self._temp - 40.0) / (slow - 40.0))), 0)
                      if spec.fan else None)
        st.throttle_reasons = tuple(reasons)
        st.energy_mj += power * dt * 1000.0
        st.pcie_rx_kbps = round(demand * 20_000.0 * (1.0 + (rng.random() - 0.5) * 0.2 if self.noise else 1.0), 0)
        st.pcie_tx_kbps = round(st.pcie_rx_kbps * 0.25, 0)
        st.perf_factor = clock if busy else 1.0
        if f.drift_rate:
            self._apply_drift(dt)
        return st

    def _apply_drift(self, dt: float) -> None:
        st = self.state
        for metric, rate in self.faults.drift_rate.items():
            off = self.faults.drift_offset.get(metric, 0.0) + rate * dt
            self.faults.drift_offset[metric] = off
            value = getattr(st, metric)
            if value is None:
                continue
            value = max(0.0, value + off)
            if metric in ("util_gpu_pct", "fan_pct"):
                value = min(100.0, value)
            elif metric == "mem_used_mb":
                value = min(st.mem_total_mb, value)
            setattr(st, metric, round(value, 2))

    def steady_state_temp(self, power_w: float) -> float:
        """Where temperature settles at a constant power (no injected heat)."""
        return self.ambient_c + self._r_th * power_w
