"""GPU memory accounting and the candidate pool: which GPUs can take a job now, without ever over-committing.

Free memory of a GPU = total - memory promised to Aether jobs placed on it - memory used by anything else.
"Anything else" is what the latest sample shows beyond the promises of the jobs already RUNNING there (a job
using more than it asked for counts too), so a promise is never counted twice once the job's memory shows up
in telemetry, and never forgotten before it does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from orchestrator.cluster import Cluster, GpuState
from services import gpu_specs
from services.schemas import Candidate

_MAX_CLOCK: dict[str, float] = {s.name: float(s.max_sm_clock_mhz) for s in gpu_specs.SPECS.values()}


@dataclass
class _Hold:
    mb: float
    tenant: str
    job_type: str
    model: str | None
    running: bool = False


@dataclass
class Accounting:
    cluster: Cluster
    by_gpu: dict[str, dict[str, _Hold]] = field(default_factory=dict)
    by_job: dict[str, list[str]] = field(default_factory=dict)
    tenant_gpus: dict[str, float] = field(default_factory=dict)
    version: dict[str, int] = field(default_factory=dict)  # per GPU, bumped whenever its promises change
    candidates: dict[str, tuple[tuple, Candidate]] = field(default_factory=dict)  # built Candidates, by GPU
    reservations: int = 0  # promises made so far: a pool built since the last one has seen them all

    def reserve(self, job_id: str, tenant: str, uuids: list[str], mb: float, job_type: str,
                model: str | None, running: bool = False) -> None:
        if job_id in self.by_job:
            self.release(job_id)
        self.reservations += 1
        self.by_job[job_id] = list(uuids)
        self.tenant_gpus[tenant] = self.tenant_gpus.get(tenant, 0.0) + len(uuids)
        for u in uuids:
            self.by_gpu.setdefault(u, {})[job_id] = _Hold(float(mb), tenant, job_type, model, running)
            self._sync(u)

    def mark_running(self, job_id: str) -> None:
        for u in self.by_job.get(job_id, ()):
            hold = self.by_gpu.get(u, {}).get(job_id)
            if hold is not None:
                hold.running = True

    def release(self, job_id: str) -> None:
        uuids = self.by_job.pop(job_id, None)
        if not uuids:
            return
        tenant = None
        for u in uuids:
            hold = self.by_gpu.get(u, {}).pop(job_id, None)
            if hold is not None:
                tenant = hold.tenant
            if u in self.by_gpu and not self.by_gpu[u]:
                del self.by_gpu[u]
            self._sync(u)
        if tenant is not None:
            left = self.tenant_gpus.get(tenant, 0.0) - len(uuids)
            if left > 0:
                self.tenant_gpus[tenant] = left
            else:
                self.tenant_gpus.pop(tenant, None)

    def clear(self) -> None:
        self.reservations += 1
        for u in list(self.by_gpu):
            self.by_gpu.pop(u)
            self._sync(u)
        self.by_job.clear()
        self.tenant_gpus.clear()
        self.candidates.clear()

    def jobs_on(self, uuid: str) -> dict[str, _Hold]:
        return self.by_gpu.get(uuid, {})

    def free_mb(self, gpu: GpuState) -> float:
        used = gpu.sample.mem_used_mb if gpu.sample is not None else None
        return _free(gpu.mem_total_mb or 0.0, used or 0.0, self.by_gpu.get(gpu.uuid))

    def _sync(self, uuid: str) -> None:
        """Mirror the promises into the cluster model, which /v1/gpus and the dashboard show."""
        self.version[uuid] = self.version.get(uuid, 0) + 1
        gpu = self.cluster.gpus.get(uuid)
        if gpu is not None:
            holds = self.by_gpu.get(uuid, {})
            gpu.reserved_mb = sum(h.mb for h in holds.values())
            gpu.jobs = set(holds)


@dataclass
class Pool:
    """The GPUs placement may use right now, as arrays for quick filtering; updated as jobs are placed."""

    gpus: list[GpuState]
    free: np.ndarray
    util: np.ndarray
    node_of: np.ndarray  # position -> node number
    nodes: list[str]
    pos: dict[str, int]

    @property
    def max_free(self) -> float:
        return float(self.free.max()) if len(self.free) else -1.0

    def take(self, uuid: str, mb: float) -> None:
        i = self.pos.get(uuid)
        if i is not None:
            self.free[i] -= mb

    def fits(self, uuid: str, mb: float) -> bool:
        i = self.pos.get(uuid)
        return i is not None and self.free[i] >= mb


def _free(total: float, used: float, holds: dict[str, _Hold] | None) -> float:
    """Free memory (see the module docstring): total - promises - what the sample shows beyond the running jobs'
    promises."""
    promised = running = 0.0
    if holds:
        for h in holds.values():
            promised += h.mb
            if h.running:
                running += h.mb
    return total - promised - max(0.0, used - running)


def build_pool(acc: Accounting, now_mono: float | None = None) -> Pool:
    """The GPUs placement may use in this pass: healthy GPUs of healthy nodes, with a fresh sample, not excluded by
    an alert, memory size known; with their free memory. Every pass walks every GPU, so one loop over plain
    Python values, arrays built once at the end: at 800 GPUs per-GPU method calls and numpy element writes were
    most of a short pass."""
    now_mono = time.monotonic() if now_mono is None else now_mono
    cluster = acc.cluster
    stale = cluster.stale_after_s
    healthy_nodes = {n.name for n in cluster.nodes.values() if n.healthy and n.heartbeat is not None}
    by_gpu = acc.by_gpu
    gpus: list[GpuState] = []
    nodes: list[str] = []
    node_num: dict[str, int] = {}
    node_of: list[int] = []
    free: list[float] = []
    util: list[float] = []
    for g in cluster.gpus.values():
        s = g.sample
        if (s is None or not s.healthy or not g.reported_healthy or g.excluded_reason is not None
                or now_mono - g.sample_mono >= stale or not g.mem_total_mb or g.node not in healthy_nodes):
            continue
        num = node_num.get(g.node)
        if num is None:
            num = node_num[g.node] = len(nodes)
            nodes.append(g.node)
        free.append(_free(g.mem_total_mb, s.mem_used_mb or 0.0, by_gpu.get(g.uuid)))
        gpus.append(g)
        node_of.append(num)
        util.append(s.util_gpu_pct or 0.0)
    return Pool(gpus, np.array(free, dtype=np.float64), np.array(util, dtype=np.float64),
                np.array(node_of, dtype=np.int64), nodes, {g.uuid: i for i, g in enumerate(gpus)})


class Capacity:
    """What each known node could ever hold (its GPUs' total memory, whatever they run now), for admission.

    Rebuilt at most once a second: a submission must not walk every GPU of a large cluster."""

    def __init__(self, cluster: Cluster, max_age_s: float = 1.0) -> None:
        self.cluster = cluster
        self.max_age_s = max_age_s
        self._built = -1e9
        self._per_node: dict[str, list[float]] = {}  # node -> its healthy GPUs' memory, largest first

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._built < self.max_age_s:
            return
        per_node: dict[str, list[float]] = {}
        for g in list(self.cluster.gpus.values()):
            if g.reported_healthy:
                per_node.setdefault(g.node, []).append(float(g.mem_total_mb or 0))
        for mems in per_node.values():
            mems.sort(reverse=True)
        self._per_node = per_node
        self._built = now

    def check(self, gpus: int, mem_mb: float) -> tuple[bool, bool]:
        """(any worker at all, some node could ever hold the job). A node that is down but known still counts
        for 'could ever'; 'workers' needs a node heartbeating now."""
        self._refresh()
        workers = any(self.cluster.node_healthy(n) for n in self._per_node)
        fits = any(len(m) >= gpus and m[gpus - 1] >= mem_mb for m in self._per_node.values())
        return workers, fits



def select(pool: Pool, mem_mb: float, gpus: int, k: int, avoid_nodes: set[str] | None = None,
           resident: set[str] | None = None) -> np.ndarray:
    """Positions of at most `k` candidates for a job: those that fit, pre-ranked when there are too many.

    Scoring every GPU of a large cluster for every job costs more than it gains (Kubernetes' scheduler samples
    nodes for the same reason). Half the slots go to the tightest fits (packing), half to the least busy GPUs
    (spreading), plus GPUs where the job's model is already resident, so the model still chooses between real
    alternatives. A multi-GPU job gets whole nodes that have enough fitting GPUs."""
    mask = pool.free >= mem_mb
    if avoid_nodes:
        for n in avoid_nodes:
            if n in pool.nodes:
                mask &= pool.node_of != pool.nodes.index(n)
    if gpus > 1:
        counts = np.bincount(pool.node_of[mask], minlength=len(pool.nodes))
        mask &= counts[pool.node_of] >= gpus
    pos = np.flatnonzero(mask)
    if len(pos) <= k:
        return pos
    if gpus > 1:
        # Rank nodes by their best-fitting GPU; take whole nodes until k GPUs are offered.
        order = pos[np.lexsort((pool.util[pos], pool.free[pos]))]
        chosen: list[int] = []
        seen: set[int] = set()
        for i in order:
            n = int(pool.node_of[i])
            if n in seen:
                continue
            seen.add(n)
            chosen.extend(int(j) for j in pos[pool.node_of[pos] == n])
            if len(chosen) >= k:
                break
        return np.array(chosen, dtype=np.int64)
    half = max(1, k // 2)
    tight = pos[np.argpartition(pool.free[pos], half - 1)[:half]]
    rest = max(1, k - half)
    idle = pos[np.argpartition(pool.util[pos] - pool.free[pos] * 1e-9, min(rest, len(pos)) - 1)[:rest]]
    picked = set(tight.tolist()) | set(idle.tolist())
    if resident:
        picked |= {int(i) for i in pos if pool.gpus[int(i)].uuid in resident}
    return np.array(sorted(picked), dtype=np.int64)


def candidates(pool: Pool, pos: np.ndarray, acc: Accounting, model: str | None) -> list[Candidate]:
    """`candidate` for each position of `pos` (positions and free memory read out of numpy once, not per GPU)."""
    return [candidate(pool, i, acc, model, free) for i, free in zip(pos.tolist(), pool.free[pos].tolist(),
                                                                      strict=True)]


def candidate(pool: Pool, i: int, acc: Accounting, model: str | None, free: float) -> Candidate:
    """The Candidate the placement service scores, from the GPU's latest sample and our promises. Reused while
    neither the sample, the promises nor the free memory change (building one is the costly part of a
    placement in a large cluster); candidates are read, never changed, by placement. `free`: pool.free[i]."""
    g = pool.gpus[i]
    s = g.sample
    holds = acc.jobs_on(g.uuid)
    resident = model is not None and any(h.model == model for h in holds.values())
    key = (g.sample_mono, acc.version.get(g.uuid, 0), free)
    cached = acc.candidates.get(g.uuid)
    if cached is not None and cached[0] == key and not resident:
        return cached[1]
    # Built without validation: every value comes from already validated samples and our own numbers.
    c = Candidate.model_construct(
        gpu_uuid=g.uuid, node=g.node, index=g.index, gpu_model=g.name, mem_total_mb=float(g.mem_total_mb or 0),
        mem_used_mb=float(s.mem_used_mb or 0.0), mem_free_mb=free,
        util_gpu_pct=float(s.util_gpu_pct or 0.0), util_mem_pct=float(s.util_mem_pct or 0.0),
        temp_c=float(s.temp_c or 0.0), power_w=float(s.power_w or 0.0),
        power_limit_w=float(s.power_limit_w or g.power_limit_w or 0.0), sm_clock_mhz=float(s.sm_clock_mhz or 0.0),
        max_sm_clock_mhz=_MAX_CLOCK.get(g.name, float(s.sm_clock_mhz or 0.0)),
        throttle_reasons=list(s.throttle_reasons), jobs_running=len(holds),
        job_types=[h.job_type for h in holds.values()], model_resident=resident, healthy=True)
    if not resident:
        acc.candidates[g.uuid] = (key, c)
    return c
