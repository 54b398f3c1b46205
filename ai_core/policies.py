"""Hard constraints and the heuristic placement policies (random, round-robin, least-utilised, best-fit).

Every policy gives each feasible candidate a score, lower is better; `choose` turns scores into one GPU or,
for a multi-GPU job, a set of GPUs on one node. The orchestrator's documented fallback is `heuristic_scores`:
best fit on memory, then least utilised. Imports nothing heavier than numpy, so the orchestrator can use it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ai_core.errors import NoFeasibleCandidate
from ai_core.features import JOB_TYPES, CandidateTable
from services.schemas.placement import Candidate, JobFeatures

POLICY_NAMES = ("random", "round_robin", "least_utilised", "best_fit")


def feasible_mask(table: CandidateTable, job: JobFeatures) -> np.ndarray:
    """Hard constraints: the GPU is healthy and its unreserved memory holds the job."""
    return (table.num["healthy"] > 0) & (table.num["mem_free_mb"] >= float(job.gpu_mem_mb))


# Peak memory over declared memory, by job type: the upper end of what jobs of the type reach (training grows
# with activations and optimiser state as batches vary, inference hardly grows past its weights and KV cache).
# The simulated worlds (SimParams.mem_growth, perturbed up to 20 %) stay inside these; tests check it.
MEM_GROWTH = {"training": 1.21, "inference": 1.05, "batch": 1.14, "interactive": 1.11}
MEM_GROWTH_UNKNOWN = max(MEM_GROWTH.values())


def unreserved_mb(table: CandidateTable) -> np.ndarray:
    """Free memory: unreserved (total minus what placed jobs were promised, seen in telemetry or not), and never
    more than the device itself reports free - memory in use that nobody reserved is not free either."""
    total, used, free = table.num["mem_total_mb"], table.num["mem_used_mb"], table.num["mem_free_mb"]
    return np.minimum(free, np.where(used > 0, total - used, free))


def growth_room_mask(table: CandidateTable, job: JobFeatures) -> np.ndarray:
    """Where the job leaves room for growth: on a GPU shared with running jobs, the co-runners' memory and the
    job's, each grown to its type's peak (MEM_GROWTH), still fits the board. A job alone on a GPU has the whole
    board, whatever it grows to; a job that shares one has only what the others leave, and an OOM kills it."""
    total = table.num["mem_total_mb"]
    occupied = np.maximum(total - unreserved_mb(table), 0.0)
    running = table.num["jobs_running"]
    co_growth = np.ones(len(total))
    known = np.zeros(len(total))
    for t in JOB_TYPES:
        co = table.num[f"co_{t}"]
        known += co
        co_growth = np.where(co > 0, np.maximum(co_growth, MEM_GROWTH[t]), co_growth)
    co_growth = np.where(running > known, MEM_GROWTH_UNKNOWN, co_growth)  # co-runners of unknown type
    own = float(job.gpu_mem_mb) * MEM_GROWTH.get(job.job_type, MEM_GROWTH_UNKNOWN)
    return (running <= 0) | (occupied * co_growth + own <= total)


def memory_safe_mask(table: CandidateTable, job: JobFeatures) -> np.ndarray:
    """The AI core's hard constraints: healthy, the declared memory fits what is free (`unreserved_mb`), and
    room is left for everyone's growth (`growth_room_mask`). No placement it makes can run a GPU out of memory."""
    return ((table.num["healthy"] > 0) & (unreserved_mb(table) >= float(job.gpu_mem_mb))
            & growth_room_mask(table, job))


def memory_safe_one(c: Candidate, job: JobFeatures) -> tuple[bool, float, float]:
    """`memory_safe_mask` for one candidate, on plain numbers: (safe, unreserved MB, jobs on it). For a few dozen
    candidates (the scheduler's fallback, once per job) numpy's per-call cost is most of the work; the same
    arithmetic in the same order gives the same answers (tests/ai_core/test_constraints.py holds them equal)."""
    total, used, free = c.mem_total_mb, c.mem_used_mb, c.mem_free_mb  # (floats: the model's fields are)
    unreserved = total - used if used > 0 else free
    if free < unreserved:
        unreserved = free
    types = c.job_types
    running = c.jobs_running if c.jobs_running >= len(types) else len(types)
    need = job.gpu_mem_mb
    if not (c.healthy and unreserved >= need):
        return False, unreserved, running
    if running <= 0:
        return True, unreserved, running
    known, co_growth = 0, 1.0
    for t in types:
        g = MEM_GROWTH.get(t)
        if g is not None:
            known += 1
            if g > co_growth:
                co_growth = g
    if running > known:
        co_growth = MEM_GROWTH_UNKNOWN  # co-runners of unknown type
    occupied = total - unreserved if total > unreserved else 0.0
    return occupied * co_growth + need * MEM_GROWTH.get(job.job_type, MEM_GROWTH_UNKNOWN) <= total, unreserved, running


def rejection_reason(healthy: bool, unreserved: float, running: float, need: float) -> str:
    """Why a candidate was refused, in words an operator can act on."""
    if not healthy:
        return "unhealthy"
    if unreserved < need:
        return f"needs {need:.0f} MB, {unreserved:.0f} MB unreserved"
    return (f"needs {need:.0f} MB, {unreserved:.0f} MB unreserved, but shared with {running:.0f} job(s) that leave "
            "no room for growth")


def rejection_reasons(table: CandidateTable, job: JobFeatures, mask: np.ndarray) -> dict[str, str]:
    """Why each candidate outside `mask` was refused (`rejection_reason`)."""
    idx = np.flatnonzero(~mask)
    need = float(job.gpu_mem_mb)
    # Plain Python values first: indexing numpy arrays one element at a time costs microseconds per candidate.
    rows = zip(idx.tolist(), (table.num["healthy"][idx] > 0).tolist(), unreserved_mb(table)[idx].tolist(),
               table.num["jobs_running"][idx].tolist(), strict=True)
    uuids = table.uuids
    return {uuids[i]: rejection_reason(healthy, free, running, need) for i, healthy, free, running in rows}


def choose(scores: np.ndarray, node_ids: np.ndarray, k: int,
           agg: Literal["max", "sum"] = "max") -> tuple[np.ndarray, float]:
    """Positions of the chosen candidate(s) (best first) and the set's score.

    k == 1: the lowest score. k > 1: on each node the k lowest scores form that node's set, valued by `agg`
    (max: a synchronous multi-GPU job runs at the pace of its slowest GPU; sum: totals such as leftover
    memory); the node with the lowest set value wins. Ties go to the earlier candidate.
    """
    n = len(scores)
    if n == 0:
        raise NoFeasibleCandidate("no candidate GPU passes the hard constraints (healthy, fits in free memory)")
    if k == 1:
        i = int(np.argmin(scores))
        return np.array([i]), float(scores[i])
    order = np.lexsort((np.arange(n), scores, node_ids))  # by node, then score, then position
    sorted_nodes = node_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_nodes[1:] != sorted_nodes[:-1]])
    ends = np.r_[starts[1:], n]
    best: tuple[float, int] | None = None
    for s, e in zip(starts, ends, strict=True):
        if e - s < k:
            continue
        block = scores[order[s:s + k]]
        value = float(block.max() if agg == "max" else block.sum())
        if best is None or value < best[0]:
            best = (value, s)
    if best is None:
        raise NoFeasibleCandidate(f"no node has {k} GPUs that pass the hard constraints")
    return order[best[1]:best[1] + k], best[0]


def heuristic_scores(table: CandidateTable, job: JobFeatures) -> np.ndarray:
    """Best fit on memory, then least utilised: MB left unreserved after placing (whole MB), ties broken by
    utilisation (util/101 < 1 MB, so it only ever separates equal fits)."""
    leftover = np.floor(table.num["mem_free_mb"] - float(job.gpu_mem_mb))
    return leftover + table.num["util_gpu_pct"] / 101.0


def best_fit_scores(table: CandidateTable, job: JobFeatures) -> np.ndarray:
    return heuristic_scores(table, job)


def least_utilised_scores(table: CandidateTable, job: JobFeatures) -> np.ndarray:
    """Lowest GPU utilisation; among equals, the GPU with the most memory unreserved."""
    total = np.maximum(table.num["mem_total_mb"], 1.0)
    return table.num["util_gpu_pct"] + 0.01 * (1.0 - table.num["mem_free_mb"] / total)


def random_scores(table: CandidateTable, rng: np.random.Generator) -> np.ndarray:
    return rng.random(len(table))


class RoundRobin:
    """Cycles through GPU positions 0..n-1: the first feasible GPU at or after the cursor."""

    def __init__(self, n_total: int) -> None:
        self.n_total = max(1, n_total)
        self.cursor = 0

    def scores(self, positions: np.ndarray) -> np.ndarray:
        return ((positions - self.cursor) % self.n_total).astype(np.float64)

    def advance(self, chosen_positions: np.ndarray) -> None:
        self.cursor = (int(np.max(chosen_positions)) + 1) % self.n_total


SET_AGG: dict[str, Literal["max", "sum"]] = {"random": "max", "round_robin": "sum", "least_utilised": "sum",
                                             "best_fit": "sum", "heuristic": "sum", "xgboost": "max"}


class Policy:
    """A placement policy the simulator can run: scores for the feasible candidates, then `choose`."""

    name = "policy"

    def scores(self, job: JobFeatures, table: CandidateTable, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def select(self, job: JobFeatures, table: CandidateTable, positions: np.ndarray) -> np.ndarray:
        """Positions in `table` of the GPU(s) chosen for `job`; `positions` are the GPUs' cluster-wide indices."""
        idx, _ = choose(self.scores(job, table, positions), table.node_ids, job.gpus, SET_AGG.get(self.name, "max"))
        self.placed(positions[idx])
        return idx

    def placed(self, chosen_positions: np.ndarray) -> None:
        """Hook for stateful policies (round-robin's cursor)."""


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def scores(self, job, table, positions):
        return random_scores(table, self.rng)


class RoundRobinPolicy(Policy):
    name = "round_robin"

    def __init__(self, n_total: int) -> None:
        self.rr = RoundRobin(n_total)

    def scores(self, job, table, positions):
        return self.rr.scores(positions)

    def placed(self, chosen_positions):
        self.rr.advance(chosen_positions)


class LeastUtilisedPolicy(Policy):
    name = "least_utilised"

    def scores(self, job, table, positions):
        return least_utilised_scores(table, job)


class BestFitPolicy(Policy):
    name = "best_fit"

    def scores(self, job, table, positions):
        return best_fit_scores(table, job)


def make_policy(name: str, *, n_gpus: int, seed: int = 0) -> Policy:
    if name == "random":
        return RandomPolicy(seed)
    if name == "round_robin":
        return RoundRobinPolicy(n_gpus)
    if name == "least_utilised":
        return LeastUtilisedPolicy()
    if name == "best_fit":
        return BestFitPolicy()
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
