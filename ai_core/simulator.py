"""Cluster simulator: replays a job trace on simulated GPUs under a placement policy, for training and evaluation.

What it models, and why placement matters in it:
- co-location interference that depends on the job types and on the co-runners' utilisation, plus time-slicing
  when combined utilisation passes 100 % (a job runs at the pace of its GPU share);
- memory-bandwidth contention when the co-runners' memory-controller demand passes a threshold;
- thermal throttling: temperature follows power with a first-order lag (per-GPU cooling quality, node inlet
  warmed by the neighbours' power); above the slowdown temperature clocks drop, and so does job speed;
- memory pressure: near-full memory slows every job on the GPU; jobs that grow past what they asked for can
  push the GPU past its memory and the growing job dies of OOM (it is re-queued and starts over);
- model load time: a job that names a model loads it first (I/O bound); if the model is still resident on the
  GPU (a recent job used it), most of that time is saved.
All parameters live in `SimParams`; `SimParams.perturbed` draws a different but plausible world so a model is
never evaluated on the settings it was trained on.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np

from ai_core import features as F
from ai_core.errors import NoFeasibleCandidate
from ai_core.policies import Policy, feasible_mask
from ai_core.traces import TraceJob, with_defaults
from services.gpu_physics import IDLE_SM_CLOCK_MHZ, POWER_EXPONENT, SW_THERMAL, THERMAL_TAU_S
from services.gpu_specs import spec as gpu_spec
from services.schemas.placement import JobFeatures

TYPE_INDEX = {t: i for i, t in enumerate(F.JOB_TYPES)}

# Slowdown a job of the row type suffers per unit of utilisation of a co-runner of the column type
# (training, inference, batch, interactive), on top of time-slicing: context switches, cache and TLB thrash,
# PCIe and host contention. Dense training and batch work hurt everyone; light interactive sessions barely do.
NOMINAL_INTERFERENCE = (
    (0.30, 0.18, 0.25, 0.05),
    (0.25, 0.10, 0.20, 0.04),
    (0.28, 0.15, 0.22, 0.05),
    (0.15, 0.08, 0.12, 0.03),
)


@dataclass(frozen=True)
class SimParams:
    interference: tuple[tuple[float, ...], ...] = NOMINAL_INTERFERENCE
    # Jobs run as plain processes on a GPU (CUDA_VISIBLE_DEVICES, no MPS): they time-slice the SMs, so a job
    # gets its share of the GPU when the co-runners' utilisation adds up past 100 %, and pays a context-switch
    # cost per co-runner.
    timeslice_overhead: float = 0.06
    # Memory-bandwidth demand per unit of utilisation, by type: LLM inference (decode) is memory bound, so two
    # inference jobs contend for bandwidth even when their SM utilisation looks moderate.
    bw_ratio: tuple[float, ...] = (0.50, 1.00, 0.70, 0.40)
    bw_threshold: float = 0.8  # combined bandwidth demand the GPU serves without contention
    bw_penalty: float = 0.8
    power_intensity: tuple[float, ...] = (1.15, 0.75, 0.95, 0.60)  # as services.gpu_physics profiles
    mem_pressure_start: float = 0.90  # share of memory in use where allocator retries begin to cost
    mem_pressure_penalty: float = 0.5
    mem_growth: tuple[tuple[float, float], ...] = ((0.85, 1.15), (0.70, 1.00), (0.80, 1.08), (0.50, 1.05))
    load_mem_frac: float = 0.5  # share of its peak memory a job holds while loading
    thermal_tau_s: float = THERMAL_TAU_S
    thermal_margin_c: float = 6.0  # a nominal board at its power limit in a 30 C inlet sits this far below slowdown
    cooling_sigma: float = 0.12  # lognormal spread of per-board cooling quality
    ambient_c: tuple[float, float] = (22.0, 32.0)  # per-node room temperature range
    neighbour_c_per_kw: float = 10.0  # inlet warming per kW drawn on average by the node's other boards
    throttle_gain: float = 0.04  # clock share lost per C above the slowdown temperature
    min_clock: float = 0.5
    load_base_s: float = 25.0  # process start, CUDA context, framework import, warm-up
    load_s_per_gb: float = 3.0  # reading the weights from shared storage, per GB of memory asked for
    max_load_frac: float = 0.5  # loading is at most this share of a job's run time
    warm_load_frac: float = 0.1  # share of the load time still paid when the model is resident
    resident_cache: int = 2  # models a GPU keeps resident after their jobs end
    estimate_range: tuple[float, float] = (1.5, 3.0)  # users' max_duration_s over the true run time
    util_noise_pct: float = 2.0  # telemetry noise on the utilisation reading
    max_dt_s: float = 15.0  # longest step without an event (temperature integration)
    head_wait_s: float = 900.0  # a queue head waiting longer stops backfilling, so big jobs are not starved
    backfill_depth: int = 64

    def perturbed(self, seed: int, strength: float = 0.2) -> SimParams:
        """A different, plausible world: every physical coefficient scaled by a factor in [1-s, 1+s]."""
        rng = np.random.default_rng(seed)

        def f() -> float:
            return float(rng.uniform(1 - strength, 1 + strength))

        shift = float(rng.uniform(-2.0, 2.0))
        return replace(
            self,
            interference=tuple(tuple(a * f() for a in row) for row in self.interference),
            timeslice_overhead=self.timeslice_overhead * f(),
            bw_ratio=tuple(b * f() for b in self.bw_ratio),
            bw_threshold=self.bw_threshold * f(),
            bw_penalty=self.bw_penalty * f(),
            mem_pressure_penalty=self.mem_pressure_penalty * f(),
            mem_growth=tuple((lo * (1 + (f() - 1) / 4), hi * (1 + (f() - 1) / 4)) for lo, hi in self.mem_growth),
            thermal_margin_c=self.thermal_margin_c * f(),
            cooling_sigma=self.cooling_sigma * f(),
            ambient_c=(self.ambient_c[0] + shift, self.ambient_c[1] + shift),
            neighbour_c_per_kw=self.neighbour_c_per_kw * f(),
            throttle_gain=self.throttle_gain * f(),
            load_base_s=self.load_base_s * f(),
            load_s_per_gb=self.load_s_per_gb * f(),
            warm_load_frac=self.warm_load_frac * f(),
        )

    def to_dict(self) -> dict:
        return {fl.name: getattr(self, fl.name) for fl in fields(self)}


LOAD, RUN = 0, 1


class SimJob:
    __slots__ = ("id", "trace", "feat", "type_i", "util", "mem_mb", "gpus_wanted", "duration_s", "load_s",
                 "model", "growth", "max_duration_s", "submit_s", "gpus", "phase", "work", "load_work",
                 "work_total", "rate", "start_s", "finish_s", "attempts", "rows", "first_start_s", "actual_mb",
                 "foot_mb")

    def __init__(self, jid: int, t: TraceJob, max_duration_s: float, growth: float, load_s: float) -> None:
        self.id = jid
        self.trace = t
        self.type_i = TYPE_INDEX[t.job_type]
        self.util = float(t.gpu_util_pct) / 100.0
        self.mem_mb = float(t.gpu_mem_mb)
        self.gpus_wanted = t.num_gpus
        self.duration_s = float(t.duration_s)
        self.model = t.model
        self.load_s = load_s
        self.growth = growth
        self.max_duration_s = max_duration_s
        self.submit_s = float(t.submit_time_s)
        self.feat = JobFeatures(gpus=t.num_gpus, gpu_mem_mb=self.mem_mb, job_type=t.job_type, model=t.model,
                                expected_util_pct=float(t.gpu_util_pct), max_duration_s=max_duration_s)
        self.gpus: list[int] = []
        self.phase = LOAD
        self.work = self.load_work = self.work_total = 0.0
        self.rate = 1.0
        self.start_s = self.finish_s = self.first_start_s = math.nan
        self.attempts = 0
        self.rows: list[int] = []
        self.actual_mb = self.foot_mb = 0.0


@dataclass
class SimResult:
    policy: str
    jobs: int
    completed: int
    unfinished: int
    unplaceable: int
    mean_jct_s: float
    p95_jct_s: float
    makespan_s: float
    mean_gpu_util_pct: float
    oom_failures: int
    throttled_gpu_s: float
    mean_queue_s: float
    mean_slowdown: float
    mean_run_slowdown: float
    warm_starts: int
    sim_steps: int
    jct_s: list[float] = field(default_factory=list, repr=False)

    def metrics(self) -> dict:
        """The figures the evaluation reports for one policy."""
        return {"mean_jct_s": self.mean_jct_s, "p95_jct_s": self.p95_jct_s, "makespan_s": self.makespan_s,
                "mean_gpu_util_pct": self.mean_gpu_util_pct, "oom_failures": self.oom_failures,
                "throttled_gpu_s": self.throttled_gpu_s, "mean_queue_s": self.mean_queue_s,
                "mean_slowdown": self.mean_slowdown, "mean_run_slowdown": self.mean_run_slowdown, "jobs": self.jobs, "completed": self.completed,
                "unfinished": self.unfinished, "unplaceable": self.unplaceable, "warm_starts": self.warm_starts}


class Recorder:
    """Training rows: features of the chosen GPU(s) at decision time, labelled when the attempt ends."""

    def __init__(self) -> None:
        self.x: list[np.ndarray] = []
        self.y: list[float] = []

    def add(self, rows: np.ndarray) -> list[int]:
        first = len(self.x)
        for r in rows:
            self.x.append(r)
            self.y.append(math.nan)
        return list(range(first, len(self.x)))

    def label(self, ids: list[int], seconds: float, ref_s: float) -> None:
        # Target: log of the attempt's time over the job's max_duration_s; both are known for real jobs too.
        value = math.log(max(seconds, 1.0) / ref_s)
        for i in ids:
            self.y[i] = value

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.x:
            return np.zeros((0, len(F.FEATURES)), np.float32), np.zeros(0, np.float32)
        x = np.stack(self.x).astype(np.float32)
        y = np.asarray(self.y, dtype=np.float32)
        keep = np.isfinite(y)
        return x[keep], y[keep]


def model_load_s(model: str | None, mem_mb: float, duration_s: float, p: SimParams) -> float:
    if not model:
        return 0.0
    # A stable per-model factor: the same model name loads equally slowly in every run.
    factor = 0.7 + 0.6 * (zlib.crc32(model.encode()) % 1000) / 999.0
    return min(p.max_load_frac * duration_s, (p.load_base_s + p.load_s_per_gb * mem_mb / 1024.0) * factor)


class ClusterSim:
    """One replay of a trace under one policy. Deterministic for (trace, params, seed, policy)."""

    def __init__(self, trace: list[TraceJob], policy: Policy, *, n_gpus: int = 64, gpu_model: str = "H100-80GB",
                 gpus_per_node: int = 8, params: SimParams | None = None, seed: int = 0,
                 recorder: Recorder | None = None, max_wall_steps: int | None = None) -> None:
        self.p = p = params or SimParams()
        self.policy = policy
        self.recorder = recorder
        self.spec = s = gpu_spec(gpu_model)
        self.n = n = int(n_gpus)
        self.gpn = max(1, min(int(gpus_per_node), n))
        rng = np.random.default_rng([seed, 7])  # the world: boards, rooms, jobs' hidden traits
        self.noise_rng = np.random.default_rng([seed, 11])  # telemetry noise
        self.node = np.arange(n) // self.gpn
        n_nodes = int(self.node.max()) + 1
        self.ambient = rng.uniform(*p.ambient_c, size=n_nodes)
        r_nominal = (s.slowdown_temp_c - p.thermal_margin_c - 30.0) / s.power_limit_w
        self.r_th = r_nominal * np.exp(rng.normal(0.0, p.cooling_sigma, size=n))
        self.total = np.full(n, float(s.mem_total_mb))
        self.reserved = np.zeros(n)
        self.actual = np.zeros(n)
        self.power = np.full(n, s.idle_power_w)
        self.temp = self.ambient[self.node] + self.r_th * s.idle_power_w
        self.clock = np.ones(n)
        self.type_count = np.zeros((n, len(F.JOB_TYPES)))
        self.jobs_on: list[list[SimJob]] = [[] for _ in range(n)]
        self.cache: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(n)]
        self.alpha = np.asarray(p.interference, dtype=np.float64)
        self.bw = np.asarray(p.bw_ratio)
        self.pint = np.asarray(p.power_intensity)
        self.U = np.zeros(n)
        self.nload = np.zeros(n)
        self.B = np.zeros(n)
        self.slowdown_c = np.full(n, s.slowdown_temp_c)
        self.node_ids = self.node.astype(np.int64)
        self.uuids = [f"sim-gpu-{i}" for i in range(n)]
        self.node_names = [f"sim-node-{i}" for i in self.node]

        self.jobs: list[SimJob] = []
        self.unplaceable = 0
        for t in trace:
            t = with_defaults(t, s.mem_total_mb)
            if t.gpu_mem_mb > s.mem_total_mb or t.num_gpus > self.gpn:
                self.unplaceable += 1  # could never run on this cluster: not part of the comparison
                continue
            lo, hi = p.mem_growth[TYPE_INDEX[t.job_type]]
            # A job never needs more than the board has: alone, it always runs.
            growth = min(float(rng.uniform(lo, hi)), 0.98 * s.mem_total_mb / max(t.gpu_mem_mb, 1.0))
            est = t.max_duration_s or math.ceil(t.duration_s * rng.uniform(*p.estimate_range) / 60.0) * 60.0
            load = model_load_s(t.model, t.gpu_mem_mb, t.duration_s, p)
            self.jobs.append(SimJob(len(self.jobs), t, float(est), growth, load))
        self.t0 = self.jobs[0].submit_s if self.jobs else 0.0
        span = (self.jobs[-1].submit_s - self.t0) if self.jobs else 0.0
        work = sum(j.duration_s * j.gpus_wanted for j in self.jobs)
        # Bound the run: even a pathological policy finishes long before this; beyond it, jobs count unfinished.
        self.t_limit = self.t0 + span + 50.0 * work / max(1, n) + 30 * 86400.0
        self.max_steps = max_wall_steps or (60 * len(self.jobs) + int((self.t_limit - self.t0) / p.max_dt_s) + 1000)
        self.oom = 0
        self.throttled_s = 0.0
        self.util_integral = 0.0
        self.warm_starts = 0
        self._dirty = True
        self._running: list[SimJob] = []

    # --- what a placement service would see ----------------------------------------------------------------
    def candidate_table(self, model: str | None) -> F.CandidateTable:
        if self._dirty:  # jobs started or ended since the last step: readings must show it
            self._aggregate(self._running)
        n, s, p = self.n, self.spec, self.p
        busy = (self.U > 0) | (self.nload > 0)
        util = np.minimum(100.0, 100.0 * np.minimum(self.U, 1.0) + 3.0 * self.nload)
        if p.util_noise_pct:
            util = np.clip(util + np.where(busy, self.noise_rng.normal(0.0, p.util_noise_pct, n), 0.0), 0.0, 100.0)
        throttled = (self.clock < 0.999) & busy
        resident = np.zeros(n)
        if model:
            for g in range(n):
                if model in self.cache[g] or any(j.model == model for j in self.jobs_on[g]):
                    resident[g] = 1.0
        num = {
            "mem_total_mb": self.total, "mem_used_mb": self.actual.copy(), "mem_free_mb": self.total - self.reserved,
            "util_gpu_pct": util, "util_mem_pct": 100.0 * np.minimum(self.B, 1.0), "temp_c": self.temp.copy(),
            "power_w": self.power.copy(), "power_limit_w": np.full(n, s.power_limit_w),
            "sm_clock_mhz": np.where(busy, s.max_sm_clock_mhz * self.clock, IDLE_SM_CLOCK_MHZ),
            "max_sm_clock_mhz": np.full(n, float(s.max_sm_clock_mhz)), "slowdown_temp_c": self.slowdown_c,
            "throttled_thermal": throttled.astype(np.float64), "throttled_power": np.zeros(n),
            "jobs_running": np.fromiter((len(js) for js in self.jobs_on), np.float64, n),
            "co_training": self.type_count[:, 0].copy(), "co_inference": self.type_count[:, 1].copy(),
            "co_batch": self.type_count[:, 2].copy(), "co_interactive": self.type_count[:, 3].copy(),
            "model_resident": resident, "healthy": np.ones(n),
        }
        return F.CandidateTable(num, self.uuids, self.node_names, list(range(n)), self.node_ids)

    def throttle_reasons(self, g: int) -> list[str]:
        return [SW_THERMAL] if self.clock[g] < 0.999 else []

    # --- dynamics -------------------------------------------------------------------------------------------
    def _aggregate(self, running: list[SimJob]) -> None:
        n, nt = self.n, len(F.JOB_TYPES)
        gi: list[int] = []  # one entry per (running job, GPU) pair
        ui: list[float] = []
        ti: list[int] = []
        load_g: list[int] = []
        for j in running:
            if j.phase == RUN:
                for g in j.gpus:
                    gi.append(g)
                    ui.append(j.util)
                    ti.append(j.type_i)
            else:
                load_g.extend(j.gpus)
        g_arr = np.asarray(gi, dtype=np.int64)
        u_arr = np.asarray(ui, dtype=np.float64)
        t_arr = np.asarray(ti, dtype=np.int64)
        U = np.bincount(g_arr, weights=u_arr, minlength=n)  # SM demand (NVML's GPU utilisation, capped at 100 %)
        B = np.bincount(g_arr, weights=u_arr * self.bw[t_arr], minlength=n)  # memory-bandwidth demand
        nc = np.bincount(g_arr, minlength=n).astype(np.float64)
        pdem = np.bincount(g_arr, weights=u_arr * self.pint[t_arr], minlength=n)
        W = np.bincount(g_arr * nt + t_arr, weights=u_arr, minlength=n * nt).reshape(n, nt)
        nload = np.bincount(np.asarray(load_g, dtype=np.int64), minlength=n).astype(np.float64)
        self.U, self.B, self.nload, self.pdem, self.nc, self.W = U, B, nload, pdem, nc, W
        self._dirty = False

    def _contention(self) -> None:
        """Per-GPU stretch factors; clocks change every step, so this runs every step."""
        p, U, B, nc, W = self.p, self.U, self.B, self.nc, self.W
        frac = self.actual / self.total
        self.mp = 1.0 + p.mem_pressure_penalty * np.clip((frac - p.mem_pressure_start) / (1 - p.mem_pressure_start),
                                                         0, None)
        # The GPU part of every job on g stretches by this much (time-slicing, switches, bandwidth, clocks).
        self.base = np.maximum(1.0, U) * (1.0 + p.timeslice_overhead * np.maximum(nc - 1, 0)) * \
            (1.0 + p.bw_penalty * np.maximum(0.0, B - p.bw_threshold)) / self.clock
        self.inter = W @ self.alpha.T  # inter[g, t]: slowdown a type-t job gets from everything on g

    def _rates(self, running: list[SimJob]) -> None:
        # Plain lists: indexing numpy scalars one at a time is several times slower in this loop.
        mp, base, inter = self.mp.tolist(), self.base.tolist(), self.inter.tolist()
        self_alpha = np.diag(self.alpha).tolist()
        for j in running:
            if j.phase == LOAD:
                j.rate = 1.0  # loading is I/O bound: GPU contention does not slow it
                continue
            u, ti = j.util, j.type_i
            worst = 1.0
            for g in j.gpus:
                s = mp[g] * ((1.0 - u) + u * base[g] * (1.0 + inter[g][ti] - self_alpha[ti] * u))
                if s > worst:
                    worst = s
            j.rate = 1.0 / worst

    def _advance_physics(self, dt: float) -> None:
        p, s = self.p, self.spec
        busy = (self.U > 0) | (self.nload > 0)
        demand = np.minimum(1.0, self.pdem + 0.05 * self.nload)
        dyn = (s.power_limit_w - s.idle_power_w) * demand * self.clock ** POWER_EXPONENT
        self.power = np.minimum(s.idle_power_w + dyn, s.power_limit_w)
        node_power = np.bincount(self.node, weights=self.power)
        node_size = np.bincount(self.node)
        others = np.maximum(node_size[self.node] - 1, 1)
        inlet = self.ambient[self.node] + p.neighbour_c_per_kw * (node_power[self.node] - self.power) / others / 1000.0
        target = inlet + self.r_th * self.power
        self.temp = target + (self.temp - target) * math.exp(-dt / p.thermal_tau_s)
        self.clock = np.clip(1.0 - p.throttle_gain * (self.temp - self.slowdown_c), p.min_clock, 1.0)
        throttled = (self.clock < 0.999) & busy
        self.throttled_s += float(throttled.sum()) * dt
        self.util_integral += float(np.minimum(self.U, 1.0).sum()) * dt * 100.0

    # --- job lifecycle --------------------------------------------------------------------------------------
    def _start(self, j: SimJob, gpus: np.ndarray, now: float) -> None:
        j.gpus = [int(g) for g in gpus]
        j.start_s = now
        if math.isnan(j.first_start_s):
            j.first_start_s = now
        warm = bool(j.model) and all(j.model in self.cache[g] or any(o.model == j.model for o in self.jobs_on[g])
                                     for g in j.gpus)
        if warm:
            self.warm_starts += 1
        j.load_work = j.load_s * (self.p.warm_load_frac if warm else 1.0)
        j.work_total = j.duration_s - j.load_s + j.load_work
        j.work = 0.0
        j.phase = LOAD if j.load_work > 0 else RUN
        for g in j.gpus:
            self.jobs_on[g].append(j)
            self.type_count[g, j.type_i] += 1
        self._dirty = True
        self._set_mem(j, j.mem_mb * j.growth * (self.p.load_mem_frac if j.phase == LOAD else 1.0))

    def _set_mem(self, j: SimJob, actual: float) -> None:
        """Move the job's memory to `actual`. The orchestrator's reservation for a job is the larger of what it
        asked for and what it is seen to use, so a job that outgrows its request shrinks the free space."""
        d_actual = actual - j.actual_mb
        d_foot = (max(j.mem_mb, actual) if actual > 0 else 0.0) - j.foot_mb
        for g in j.gpus:
            self.actual[g] += d_actual
            self.reserved[g] += d_foot
        j.actual_mb = actual
        j.foot_mb += d_foot

    def _release(self, j: SimJob) -> None:
        self._set_mem(j, 0.0)
        for g in j.gpus:
            self.jobs_on[g].remove(j)
            self.type_count[g, j.type_i] -= 1
        self._dirty = True
        self.reserved[np.abs(self.reserved) < 1e-6] = 0.0
        self.actual[np.abs(self.actual) < 1e-6] = 0.0

    def _oom_check(self, j: SimJob) -> bool:
        return any(self.actual[g] > self.total[g] + 1e-6 for g in j.gpus)

    def _to_run_phase(self, j: SimJob) -> None:
        j.phase = RUN
        self._dirty = True
        self._set_mem(j, j.mem_mb * j.growth)

    def _fail_oom(self, j: SimJob, now: float, queue: deque) -> None:
        self.oom += 1
        if self.recorder is not None and j.rows:
            # The attempt cost its time so far plus a full restart.
            self.recorder.label(j.rows, (now - j.start_s) + j.duration_s, j.max_duration_s)
        self._release(j)
        j.gpus, j.rows, j.attempts = [], [], j.attempts + 1
        # As an orchestrator would on a retry: reserve the peak the job was seen to reach, so it is not packed
        # into the same too-small gap again.
        peak = j.mem_mb * j.growth
        j.mem_mb = min(float(math.ceil(peak / 256.0) * 256.0), float(self.spec.mem_total_mb))
        j.growth = peak / j.mem_mb
        j.feat = j.feat.model_copy(update={"gpu_mem_mb": j.mem_mb})
        queue.appendleft(j)

    def _finish(self, j: SimJob, now: float) -> None:
        if self.recorder is not None and j.rows:
            self.recorder.label(j.rows, now - j.start_s, j.max_duration_s)
        self._release(j)
        if j.model:
            for g in j.gpus:
                c = self.cache[g]
                c[j.model] = None
                c.move_to_end(j.model)
                while len(c) > self.p.resident_cache:
                    c.popitem(last=False)
        j.finish_s = now

    def _try_place(self, j: SimJob, now: float, blocked: np.ndarray | None = None,
                   max_free: float | None = None) -> bool:
        if max_free is not None and j.mem_mb > max_free:
            return False  # quick refusal: fits on no GPU at all
        free = self.total - self.reserved
        if blocked is not None:
            free = np.where(blocked, -1.0, free)
        if int(np.count_nonzero(free >= j.mem_mb)) < j.gpus_wanted:
            return False
        table = self.candidate_table(j.model)
        mask = feasible_mask(table, j.feat)
        if blocked is not None:
            mask &= ~blocked  # held for a long-waiting job; the policy never sees these GPUs
        if j.gpus_wanted > 1:
            per_node = np.bincount(self.node[mask], minlength=int(self.node.max()) + 1)
            if per_node.max(initial=0) < j.gpus_wanted:
                return False
        positions = np.flatnonzero(mask)
        sub = table.take(positions)
        try:
            idx = self.policy.select(j.feat, sub, positions)
        except NoFeasibleCandidate:
            return False  # the policy's own hard constraints (e.g. room for memory growth) say wait
        gpus = positions[idx]
        if self.recorder is not None:
            j.rows = self.recorder.add(F.matrix(j.feat, sub.take(idx).num))
        self._start(j, gpus, now)
        return True

    def _reservation(self, j: SimJob) -> np.ndarray:
        """GPUs held for a job that has waited too long (as a backfilling batch scheduler does): on the node
        where it is closest to fitting, its k GPUs with the most free memory take no other job."""
        free = self.total - self.reserved
        n_nodes = int(self.node.max()) + 1
        best: tuple[float, np.ndarray] | None = None
        for nd in range(n_nodes):
            gpus = np.flatnonzero(self.node == nd)
            if len(gpus) < j.gpus_wanted:
                continue
            top = gpus[np.argsort(-free[gpus], kind="stable")[:j.gpus_wanted]]
            value = float(np.minimum(free[top], j.mem_mb).sum())
            if best is None or value > best[0]:
                best = (value, top)
        blocked = np.zeros(self.n, dtype=bool)
        if best is not None:
            blocked[best[1]] = True
        return blocked

    def _schedule(self, queue: deque, running: list[SimJob], now: float) -> None:
        blocked: np.ndarray | None = None
        i = 0
        tried = 0
        max_free = float((self.total - self.reserved).max())
        while i < len(queue) and tried < self.p.backfill_depth:
            j = queue[i]
            tried += 1
            if self._try_place(j, now, blocked if i > 0 else None, max_free):
                max_free = float((self.total - self.reserved).max())
                del queue[i]
                running.append(j)
                if self._oom_check(j):
                    running.remove(j)
                    self._fail_oom(j, now, queue)
                    i += 1  # it went back to the head; do not retry it in this pass
                continue
            if i == 0 and now - j.submit_s > self.p.head_wait_s:
                blocked = self._reservation(j)
            i += 1

    def run(self, progress: Callable[[int], None] | None = None, wall_limit_s: float | None = None) -> SimResult:
        """Replay the whole trace. With `wall_limit_s`, stop after that much real time; jobs not finished by
        then count as unfinished (benchmarks stay bounded whatever trace they are given)."""
        wall_end = time.monotonic() + wall_limit_s if wall_limit_s else math.inf
        jobs = self.jobs
        queue: deque[SimJob] = deque()
        running: list[SimJob] = []
        self._running = running
        now = self.t0
        i_arr = 0
        steps = 0
        eps = 1e-7
        while (i_arr < len(jobs) or running or queue) and steps < self.max_steps and now < self.t_limit:
            steps += 1
            if self._dirty:
                self._aggregate(running)
            self._contention()
            self._rates(running)
            dt = self.p.max_dt_s
            if i_arr < len(jobs):
                dt = min(dt, jobs[i_arr].submit_s - now)
            elif not running:
                dt = min(dt, 60.0)  # only a queue that cannot start: should not happen, but never spin
            for j in running:
                boundary = j.load_work if j.phase == LOAD else j.work_total
                dt = min(dt, (boundary - j.work) / j.rate)
            dt = max(dt, 0.0)
            if dt > 0:
                for j in running:
                    j.work += j.rate * dt
                self._advance_physics(dt)
                now += dt
            changed = False
            for j in list(running):
                if j.phase == LOAD and j.work >= j.load_work - eps:
                    self._to_run_phase(j)
                    changed = True
                    if self._oom_check(j):
                        running.remove(j)
                        self._fail_oom(j, now, queue)
                        continue
                if j.phase == RUN and j.work >= j.work_total - eps:
                    running.remove(j)
                    self._finish(j, now)
                    changed = True
            while i_arr < len(jobs) and jobs[i_arr].submit_s <= now + eps:
                queue.append(jobs[i_arr])
                i_arr += 1
                changed = True
            if changed:
                self._schedule(queue, running, now)
            if steps % 1000 == 0:
                if progress is not None:
                    progress(steps)
                if time.monotonic() > wall_end:
                    break
        return self._result(steps)

    def _result(self, steps: int) -> SimResult:
        done = [j for j in self.jobs if not math.isnan(j.finish_s)]
        jct = np.array([j.finish_s - j.submit_s for j in done]) if done else np.zeros(0)
        queue_s = np.array([j.first_start_s - j.submit_s for j in done]) if done else np.zeros(0)
        slow = np.array([(j.finish_s - j.submit_s) / j.duration_s for j in done]) if done else np.zeros(0)
        # Placement quality without queueing: time from the first start to the end, over the run time alone.
        run_slow = np.array([(j.finish_s - j.first_start_s) / j.duration_s for j in done]) if done else np.zeros(0)
        end = max((j.finish_s for j in done), default=self.t0)
        makespan = end - self.t0
        util = self.util_integral / (self.n * makespan) if makespan > 0 else 0.0
        return SimResult(
            policy=getattr(self.policy, "name", "policy"), jobs=len(self.jobs), completed=len(done),
            unfinished=len(self.jobs) - len(done), unplaceable=self.unplaceable,
            mean_jct_s=float(jct.mean()) if len(jct) else math.nan,
            p95_jct_s=float(np.percentile(jct, 95)) if len(jct) else math.nan,
            makespan_s=float(makespan), mean_gpu_util_pct=float(util), oom_failures=self.oom,
            throttled_gpu_s=float(self.throttled_s), mean_queue_s=float(queue_s.mean()) if len(queue_s) else math.nan,
            mean_slowdown=float(slow.mean()) if len(slow) else math.nan,
            mean_run_slowdown=float(run_slow.mean()) if len(run_slow) else math.nan, warm_starts=self.warm_starts,
            sim_steps=steps, jct_s=jct.tolist())


def simulate(trace: list[TraceJob], policy: Policy, **kwargs) -> SimResult:
    return ClusterSim(trace, policy, **kwargs).run()
