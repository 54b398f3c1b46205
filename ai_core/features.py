"""Placement features: a job and its candidate GPUs become one float32 matrix, one row per candidate.

The service builds the candidate table from `Candidate` models; the simulator builds the same table from its
own state, so training and serving compute features with the very same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from services.gpu_specs import SPECS
from services.schemas.placement import Candidate, JobFeatures

JOB_TYPES = ("training", "inference", "batch", "interactive")
# Utilisation assumed for a job that gives no `expected_util_pct`, by type (typical of such workloads).
DEFAULT_UTIL_PCT = {"training": 90.0, "inference": 45.0, "batch": 70.0, "interactive": 15.0}
DEFAULT_OTHER_UTIL_PCT = 60.0
# A job without `max_duration_s` is taken as an hour long; only the absolute score depends on it, not the ranking.
DEFAULT_MAX_DURATION_S = 3600.0
# Thermal slowdown threshold assumed for a GPU model we have no datasheet for.
DEFAULT_SLOWDOWN_TEMP_C = 85.0

# Columns of the candidate table (all float64; booleans as 0/1).
CANDIDATE_COLUMNS = (
    "mem_total_mb", "mem_used_mb", "mem_free_mb", "util_gpu_pct", "util_mem_pct", "temp_c", "power_w",
    "power_limit_w", "sm_clock_mhz", "max_sm_clock_mhz", "slowdown_temp_c", "throttled_thermal",
    "throttled_power", "jobs_running", "co_training", "co_inference", "co_batch", "co_interactive",
    "model_resident", "healthy",
)

FEATURES = (
    "job_gpus", "job_mem_gb", "job_mem_frac", "job_util", "job_log_max_duration",
    "job_training", "job_inference", "job_batch", "job_interactive",
    "mem_total_gb", "mem_used_frac", "mem_reserved_frac", "headroom_frac", "headroom_gb", "actual_headroom_frac",
    "util_gpu", "util_mem", "combined_util",
    "temp_c", "temp_margin_c", "temp_rise_per_kw", "power_frac", "clock_frac", "throttled_thermal",
    "throttled_power",
    "jobs_running", "co_training", "co_inference", "co_batch", "co_interactive", "co_same_type",
    "model_resident",
)
# Stored with every model: a model trained on another feature layout is refused at load time.
FEATURE_SCHEMA = "f1:" + ",".join(FEATURES)

_SLOWDOWN_BY_NAME = {**{k: s.slowdown_temp_c for k, s in SPECS.items()},
                     **{s.name: s.slowdown_temp_c for s in SPECS.values()}}


def slowdown_temp(gpu_model: str) -> float:
    """The thermal slowdown threshold of a GPU model (datasheet key or NVML name); a default if unknown."""
    return _SLOWDOWN_BY_NAME.get(gpu_model, DEFAULT_SLOWDOWN_TEMP_C)


def job_util_pct(job: JobFeatures) -> float:
    if job.expected_util_pct is not None:
        return float(job.expected_util_pct)
    return DEFAULT_UTIL_PCT.get(job.job_type, DEFAULT_OTHER_UTIL_PCT)


def job_max_duration_s(job: JobFeatures) -> float:
    return float(job.max_duration_s) if job.max_duration_s and job.max_duration_s > 0 else DEFAULT_MAX_DURATION_S


def _throttle_kinds(reasons: Sequence[str]) -> tuple[float, float]:
    # NVML reason names differ by driver and binding (sw_thermal_slowdown, HwSlowdown, SW_POWER_CAP ...).
    thermal = power = 0.0
    for r in reasons:
        low = r.lower()
        if "thermal" in low or "slowdown" in low:
            thermal = 1.0
        if "power" in low:
            power = 1.0
    return thermal, power


@dataclass
class CandidateTable:
    """Candidates as columns: `num[name]` is one float64 array per CANDIDATE_COLUMNS entry."""

    num: dict[str, np.ndarray]
    uuids: list[str]
    nodes: list[str]
    indices: list[int]
    node_ids: np.ndarray  # an integer per distinct node, for grouping multi-GPU sets

    def __len__(self) -> int:
        return len(self.uuids)

    def take(self, idx: np.ndarray) -> CandidateTable:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return CandidateTable({k: v[idx] for k, v in self.num.items()}, [], [], [], self.node_ids[idx])
        # One C-level getter over plain ints (indexing lists with numpy integers is several times slower).
        pick = itemgetter(*idx.tolist())
        if len(idx) == 1:
            uuids, nodes, indices = [pick(self.uuids)], [pick(self.nodes)], [pick(self.indices)]
        else:
            uuids, nodes, indices = list(pick(self.uuids)), list(pick(self.nodes)), list(pick(self.indices))
        return CandidateTable({k: v[idx] for k, v in self.num.items()}, uuids, nodes, indices, self.node_ids[idx])


def node_codes(nodes: Sequence[str]) -> np.ndarray:
    """0, 1, 2 ... per distinct node, in order of first appearance (ties between nodes go to the earlier one)."""
    codes = {n: i for i, n in enumerate(dict.fromkeys(nodes))}
    return np.fromiter(map(codes.__getitem__, nodes), dtype=np.int64, count=len(nodes))


_NUMERIC_COLS = ("mem_total_mb", "mem_used_mb", "mem_free_mb", "util_gpu_pct", "util_mem_pct", "temp_c", "power_w",
                 "power_limit_w", "sm_clock_mhz", "max_sm_clock_mhz", "jobs_running", "model_resident", "healthy")
_NUMERIC = itemgetter(*_NUMERIC_COLS)
_IDENT_COLS = ("gpu_uuid", "node", "index", "gpu_model", "throttle_reasons", "job_types")
# One C-level map per column: for 1,000 candidates less than half the time of zip(*map(itemgetter(*cols))).
_IDENT = [itemgetter(c) for c in _IDENT_COLS]
_NUMERIC_ATTRS = attrgetter(*_NUMERIC_COLS)
_IDENT_ATTRS = [attrgetter(c) for c in _IDENT_COLS]


class _TypeCodes(dict):
    # A job type we do not know counts as a co-runner of its own kind (the last column); __missing__ answers
    # without storing, so arbitrary strings from requests do not grow the table.
    def __missing__(self, key: str) -> int:
        return len(JOB_TYPES)


_TYPE_POS = _TypeCodes({t: i for i, t in enumerate(JOB_TYPES)})


def _flat_rows(lists: Sequence[list]) -> tuple[np.ndarray, list]:
    """The row of each element of `lists`, and the elements, flattened (C-level passes, no per-row loop)."""
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return np.repeat(np.arange(len(lists)), lens), list(chain.from_iterable(lists))


def _build_table(arr: np.ndarray, uuids: list[str], nodes: list[str], indices: list[int], models: Sequence[str],
                 reasons: Sequence[list[str]], types: Sequence[list[str]]) -> CandidateTable:
    """The table from the numeric readings (n x len(_NUMERIC_COLS)) and the per-candidate strings and lists."""
    n = len(uuids)
    num = {name: arr[:, i] for i, name in enumerate(_NUMERIC_COLS)}
    # Per distinct value, not per candidate: a cluster has a handful of GPU models, throttle reasons and nodes.
    temps = {m: slowdown_temp(m) for m in set(models)}
    num["slowdown_temp_c"] = np.fromiter(map(temps.__getitem__, models), dtype=np.float64, count=n)
    thermal = np.zeros(n)
    power = np.zeros(n)
    rows, flat = _flat_rows(reasons)
    if flat:
        kinds = {r: _throttle_kinds((r,)) for r in set(flat)}
        k = np.array([kinds[r] for r in flat], dtype=np.float64).reshape(-1, 2)
        np.maximum.at(thermal, rows, k[:, 0])
        np.maximum.at(power, rows, k[:, 1])
    num["throttled_thermal"], num["throttled_power"] = thermal, power
    rows, flat = _flat_rows(types)
    nt = len(JOB_TYPES) + 1
    codes = np.fromiter(map(_TYPE_POS.__getitem__, flat), dtype=np.int64, count=len(flat))
    counts = np.bincount(rows * nt + codes, minlength=n * nt).reshape(n, nt).astype(np.float64)
    for t in JOB_TYPES:
        num[f"co_{t}"] = counts[:, _TYPE_POS[t]]
    # A job on the GPU is a job running on it, whatever the reported count says.
    num["jobs_running"] = np.maximum(num["jobs_running"], counts.sum(axis=1))
    return CandidateTable(num, uuids, nodes, indices, node_codes(nodes))


def _columns(rows: Sequence[Any], numeric: Any, ident: list[Any]) -> CandidateTable:
    """Candidate rows to the table: the readings in one fromiter pass over `numeric` (a getter of every numeric
    column), the identity columns one C-level map each over the `ident` getters."""
    n, k = len(rows), len(_NUMERIC_COLS)
    arr = np.fromiter(chain.from_iterable(map(numeric, rows)), dtype=np.float64, count=n * k).reshape(n, k)
    return _build_table(arr, *(list(map(g, rows)) for g in ident))


def table_from_candidates(candidates: Sequence[Candidate]) -> CandidateTable:
    """Candidates to columns: thousands of candidates cost ~1 ms. The fields are read from each model's __dict__
    (where pydantic keeps them, also for model_construct): a dict lookup is cheaper than an attribute lookup
    through the model class."""
    return _columns(list(map(vars, candidates)), _NUMERIC, _IDENT)


def table_from_wire(candidates: Sequence[Any]) -> CandidateTable:
    """Candidates as the compiled decoder's Structs (services/fastdecode.py: checked against Candidate, no model
    object each) to columns, read by attribute."""
    return _columns(candidates, _NUMERIC_ATTRS, _IDENT_ATTRS)


def _missing_if_zero(a: np.ndarray) -> np.ndarray:
    # The contract's defaults are 0 for readings a device could not give; 0 W or 0 °C is never a real reading.
    return np.where(a > 0, a, np.nan)


def matrix(job: JobFeatures, num: dict[str, np.ndarray]) -> np.ndarray:
    """The feature matrix (n x len(FEATURES), float32) for `job` on each candidate; NaN marks a missing reading."""
    n = len(num["mem_total_mb"])
    total = np.maximum(num["mem_total_mb"], 1.0)
    job_mem = float(job.gpu_mem_mb)
    util_job = job_util_pct(job) / 100.0
    temp = _missing_if_zero(num["temp_c"])
    power = _missing_if_zero(num["power_w"])
    limit = _missing_if_zero(num["power_limit_w"])
    max_clock = _missing_if_zero(num["max_sm_clock_mhz"])
    jt = job.job_type
    co_same = num[f"co_{jt}"] if jt in JOB_TYPES else np.zeros(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = (
            np.full(n, float(job.gpus)),
            np.full(n, job_mem / 1024.0),
            job_mem / total,
            np.full(n, util_job),
            np.full(n, math.log(job_max_duration_s(job))),
            np.full(n, 1.0 if jt == "training" else 0.0),
            np.full(n, 1.0 if jt == "inference" else 0.0),
            np.full(n, 1.0 if jt == "batch" else 0.0),
            np.full(n, 1.0 if jt == "interactive" else 0.0),
            total / 1024.0,
            num["mem_used_mb"] / total,
            1.0 - num["mem_free_mb"] / total,
            (num["mem_free_mb"] - job_mem) / total,
            (num["mem_free_mb"] - job_mem) / 1024.0,
            (total - num["mem_used_mb"] - job_mem) / total,
            num["util_gpu_pct"] / 100.0,
            num["util_mem_pct"] / 100.0,
            num["util_gpu_pct"] / 100.0 + util_job,
            temp,
            num["slowdown_temp_c"] - temp,
            (temp - 20.0) / power * 1000.0,
            power / limit,
            num["sm_clock_mhz"] / max_clock,
            num["throttled_thermal"],
            num["throttled_power"],
            num["jobs_running"],
            num["co_training"],
            num["co_inference"],
            num["co_batch"],
            num["co_interactive"],
            co_same,
            num["model_resident"],
        )
    x = np.stack(cols, axis=1).astype(np.float32, copy=False)
    # A ratio with a near-zero denominator (or a reading past float32) is not information: make it missing,
    # which XGBoost handles, instead of inf, which it refuses.
    bad = ~np.isfinite(x)
    if bad.any():
        x[bad] = np.nan
    return x


_IDX = {name: i for i, name in enumerate(FEATURES)}
_CO_RUNNER_ZERO = [_IDX[n] for n in ("mem_used_frac", "mem_reserved_frac", "util_gpu", "util_mem", "jobs_running",
                                     "co_training", "co_inference", "co_batch", "co_interactive", "co_same_type")]


def emptied(x: np.ndarray) -> np.ndarray:
    """The same rows with the GPUs' co-runners taken away (memory, utilisation, jobs), everything else kept
    (model, temperature, residency): what the job would meet on that GPU if it ran there alone."""
    e = x.copy()
    e[:, _CO_RUNNER_ZERO] = 0.0
    free_after = 1.0 - e[:, _IDX["job_mem_frac"]]
    e[:, _IDX["headroom_frac"]] = free_after
    e[:, _IDX["actual_headroom_frac"]] = free_after
    e[:, _IDX["headroom_gb"]] = free_after * e[:, _IDX["mem_total_gb"]]
    e[:, _IDX["combined_util"]] = e[:, _IDX["job_util"]]
    return e


def jobs_running_column(x: np.ndarray) -> np.ndarray:
    return x[:, _IDX["jobs_running"]]

