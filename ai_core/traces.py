"""Job traces for the simulator: a CSV loader (bad rows refused with their line numbers) and a synthetic generator.

CSV header: `submit_time_s,duration_s,num_gpus,gpu_mem_mb,gpu_util_pct,job_type`; other columns are ignored
except the optional `model` and `max_duration_s`. Required: submit_time_s (>= 0), duration_s (> 0, the job's
run time alone on an idle GPU, model load included), num_gpus (integer >= 1). Optional, with these defaults:
  gpu_mem_mb      empty -> 40 % of the cluster's GPU memory (decided by the simulator)
  gpu_util_pct    empty -> the job type's typical utilisation (training 90, inference 45, batch 70, interactive 15)
  job_type        empty -> training (public GPU traces such as Philly and PAI are mostly training jobs)
  model           empty -> none (no load time can be saved by residency)
  max_duration_s  empty -> the simulator draws the user's estimate, 1.5-3x duration_s
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ai_core.errors import TraceInvalid
from ai_core.features import JOB_TYPES

REQUIRED = ("submit_time_s", "duration_s", "num_gpus")
OPTIONAL = ("gpu_mem_mb", "gpu_util_pct", "job_type", "model", "max_duration_s")
DEFAULT_JOB_TYPE = "training"
MAX_REPORTED_ERRORS = 50


@dataclass(frozen=True)
class TraceJob:
    submit_time_s: float
    duration_s: float
    num_gpus: int
    gpu_mem_mb: float | None = None
    gpu_util_pct: float | None = None
    job_type: str = DEFAULT_JOB_TYPE
    model: str | None = None
    max_duration_s: float | None = None
    line: int | None = None  # where it came from in a CSV, for messages


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _num(raw: str, name: str, *, integer: bool = False, lo: float | None = None, lo_open: bool = False,
         hi: float | None = None) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={raw!r} is not finite")
    if integer and value != int(value):
        raise ValueError(f"{name}={raw!r} is not a whole number")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name}={raw!r} must be {'>' if lo_open else '>='} {lo:g}")
    if hi is not None and value > hi:
        raise ValueError(f"{name}={raw!r} must be <= {hi:g}")
    return value


def parse_row(row: dict[str, str], line: int) -> TraceJob:
    """One CSV record -> TraceJob; raises ValueError naming the field and the problem."""
    def get(name: str) -> str:
        return (row.get(name) or "").strip()

    for name in REQUIRED:
        if not get(name):
            raise ValueError(f"{name} is empty")
    submit = _num(get("submit_time_s"), "submit_time_s", lo=0)
    duration = _num(get("duration_s"), "duration_s", lo=0, lo_open=True)
    gpus = int(_num(get("num_gpus"), "num_gpus", integer=True, lo=1, hi=1024))
    mem = _num(get("gpu_mem_mb"), "gpu_mem_mb", lo=0) if get("gpu_mem_mb") else None
    util = _num(get("gpu_util_pct"), "gpu_util_pct", lo=0, hi=100) if get("gpu_util_pct") else None
    job_type = get("job_type").lower() or DEFAULT_JOB_TYPE
    if job_type not in JOB_TYPES:
        raise ValueError(f"job_type={get('job_type')!r} is not one of {', '.join(JOB_TYPES)}")
    max_dur = _num(get("max_duration_s"), "max_duration_s", lo=0, lo_open=True) if get("max_duration_s") else None
    return TraceJob(submit, duration, gpus, mem, util, job_type, get("model") or None, max_dur, line)


def load_csv(path: str | Path, *, skip_bad_rows: bool = False) -> tuple[list[TraceJob], list[RowError]]:
    """Read a trace. Any bad row makes it fail with TraceInvalid listing every bad line (up to 50), unless
    `skip_bad_rows`, where bad rows are left out and returned. Jobs come back ordered by submit time."""
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8-sig")  # utf-8-sig: spreadsheets prepend a BOM
    except OSError as exc:
        raise TraceInvalid(f"cannot read trace {p}: {exc.strerror}") from exc
    jobs: list[TraceJob] = []
    errors: list[RowError] = []
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise TraceInvalid(f"trace {p}: header lacks {', '.join(missing)} (line 1 is {','.join(header)!r})",
                               details={"errors": [f"line 1: missing column(s) {', '.join(missing)}"]})
        reader.fieldnames = header
        try:
            for row in reader:
                line = reader.line_num  # the record's last physical line, 1-based, header is line 1
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue
                if None in row:
                    errors.append(RowError(line, f"{len(row[None])} more field(s) than the header"))
                    continue
                try:
                    jobs.append(parse_row(row, line))
                except ValueError as exc:
                    errors.append(RowError(line, str(exc)))
        except csv.Error as exc:
            errors.append(RowError(reader.line_num, f"unreadable CSV: {exc}"))
    if errors and not skip_bad_rows:
        shown = [str(e) for e in errors[:MAX_REPORTED_ERRORS]]
        more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
        raise TraceInvalid(f"trace {p}: {len(errors)} bad row(s): " + "; ".join(shown[:5]) + more,
                           details={"errors": shown, "bad_rows": len(errors)})
    if not jobs:
        raise TraceInvalid(f"trace {p} holds no jobs", details={"errors": [str(e) for e in errors[:50]]})
    jobs.sort(key=lambda j: j.submit_time_s)  # stable: equal submit times keep file order
    return jobs, errors


def write_csv(path: str | Path, jobs: Iterable[TraceJob]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*REQUIRED, *OPTIONAL])
        for j in jobs:
            w.writerow([f"{j.submit_time_s:.3f}", f"{j.duration_s:.3f}", j.num_gpus,
                        "" if j.gpu_mem_mb is None else f"{j.gpu_mem_mb:.0f}",
                        "" if j.gpu_util_pct is None else f"{j.gpu_util_pct:.1f}", j.job_type, j.model or "",
                        "" if j.max_duration_s is None else f"{j.max_duration_s:.0f}"])
    return p


# --- synthetic workload ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkloadMix:
    """The shape of the synthetic workload: an inference/fine-tuning cluster with shared, popular models."""

    type_probs: tuple[float, float, float, float] = (0.25, 0.40, 0.25, 0.10)  # JOB_TYPES order
    # Median run time alone (s) and lognormal sigma, per type.
    duration: tuple[tuple[float, float], ...] = ((1800, 1.0), (420, 0.8), (600, 0.9), (1200, 0.7))
    # Share of the GPU's memory asked for (uniform range), per type.
    mem_frac: tuple[tuple[float, float], ...] = ((0.30, 0.85), (0.15, 0.55), (0.10, 0.60), (0.05, 0.30))
    # Utilisation alone (uniform range, %), per type.
    util_pct: tuple[tuple[float, float], ...] = ((75, 98), (30, 70), (50, 90), (5, 25))
    # GPU count distribution of training jobs (others use one, batch sometimes two).
    training_gpus: tuple[tuple[int, float], ...] = ((1, 0.55), (2, 0.20), (4, 0.17), (8, 0.08))
    batch_two_gpus: float = 0.15
    n_models: int = 16
    model_zipf: float = 1.1
    model_prob: tuple[float, float, float, float] = (0.6, 0.95, 0.3, 0.5)  # P(job loads a named model)
    burst_prob: float = 0.08  # chance a training job starts a sweep of similar jobs arriving together
    burst_size: tuple[int, int] = (3, 10)


def synthetic_trace(n_jobs: int, n_gpus: int, *, load: float = 0.8, seed: int = 0, gpu_mem_mb: float = 81559,
                    mix: WorkloadMix | None = None) -> list[TraceJob]:
    """`n_jobs` jobs whose GPU-time demand is `load` x the cluster's capacity over the trace's span
    (Poisson arrivals plus hyper-parameter sweeps that arrive together)."""
    if n_jobs < 1 or n_gpus < 1 or not 0 < load <= 10:
        raise ValueError("n_jobs and n_gpus must be >= 1 and 0 < load <= 10")
    mix = mix or WorkloadMix()
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, mix.n_models + 1, dtype=float)
    model_p = ranks ** -mix.model_zipf
    model_p /= model_p.sum()
    jobs: list[dict] = []
    while len(jobs) < n_jobs:
        ti = int(rng.choice(len(JOB_TYPES), p=mix.type_probs))
        jt = JOB_TYPES[ti]
        med, sigma = mix.duration[ti]
        spec = {
            "job_type": jt,
            "duration_s": float(np.clip(med * np.exp(rng.normal(0, sigma)), 30, 86400)),
            "gpu_mem_mb": float(round(gpu_mem_mb * rng.uniform(*mix.mem_frac[ti]))),
            "gpu_util_pct": float(round(rng.uniform(*mix.util_pct[ti]), 1)),
            "num_gpus": 1,
            "model": f"model-{int(rng.choice(mix.n_models, p=model_p)):02d}" if rng.random() < mix.model_prob[ti]
            else None,
        }
        if jt == "training":
            counts, probs = zip(*mix.training_gpus, strict=True)
            spec["num_gpus"] = int(rng.choice(counts, p=probs))
        elif jt == "batch" and rng.random() < mix.batch_two_gpus:
            spec["num_gpus"] = 2
        group = [spec]
        if jt == "training" and rng.random() < mix.burst_prob:
            for _ in range(int(rng.integers(mix.burst_size[0], mix.burst_size[1] + 1)) - 1):
                group.append({**spec, "duration_s": float(np.clip(spec["duration_s"] * rng.uniform(0.7, 1.3),
                                                                  30, 86400))})
        for s in group:
            s["burst"] = len(group) > 1
        jobs.extend(group)
    jobs = jobs[:n_jobs]
    # Load is compute demand: run time alone x GPUs x utilisation, over the GPUs' capacity in the span. In a
    # cluster whose GPUs are shared, this (not GPU-time) is what makes "80 % load" mean GPUs 80 % busy.
    work = sum(j["duration_s"] * j["num_gpus"] * j["gpu_util_pct"] / 100.0 for j in jobs)
    span = work / (load * n_gpus)
    # Arrival epochs: Poisson over the span; members of a sweep arrive seconds apart.
    gaps = rng.exponential(1.0, size=n_jobs)
    times = np.cumsum(gaps)
    times = (times - times[0]) / max(times[-1] - times[0], 1e-9) * span
    out: list[TraceJob] = []
    prev_t = 0.0
    for j, t in zip(jobs, times, strict=True):
        submit = prev_t + rng.uniform(1, 10) if j["burst"] and out and out[-1].job_type == j["job_type"] and \
            out[-1].model == j["model"] else float(t)
        submit = max(submit, prev_t)
        prev_t = submit
        out.append(TraceJob(round(submit, 3), round(j["duration_s"], 3), j["num_gpus"], j["gpu_mem_mb"],
                            j["gpu_util_pct"], j["job_type"], j["model"]))
    return out


def offered_load(jobs: list[TraceJob], n_gpus: int, *, basis: str = "compute") -> float:
    """Demand over capacity between the first and the last submission. basis "compute": run time x GPUs x
    utilisation (the type's default where the trace has none); basis "gpu_time": run time x GPUs."""
    from ai_core.features import DEFAULT_UTIL_PCT
    if len(jobs) < 2:
        return 0.0
    span = jobs[-1].submit_time_s - jobs[0].submit_time_s
    if basis == "gpu_time":
        work = sum(j.duration_s * j.num_gpus for j in jobs)
    else:
        work = sum(j.duration_s * j.num_gpus * (j.gpu_util_pct if j.gpu_util_pct is not None
                                                else DEFAULT_UTIL_PCT.get(j.job_type, 60.0)) / 100.0 for j in jobs)
    return work / (n_gpus * span) if span > 0 else math.inf


def with_defaults(job: TraceJob, gpu_mem_total_mb: float) -> TraceJob:
    """Fill the optional fields a CSV left empty with the documented defaults (except max_duration_s)."""
    from ai_core.features import DEFAULT_UTIL_PCT
    return replace(job,
                   gpu_mem_mb=job.gpu_mem_mb if job.gpu_mem_mb is not None else round(0.4 * gpu_mem_total_mb),
                   gpu_util_pct=job.gpu_util_pct if job.gpu_util_pct is not None
                   else DEFAULT_UTIL_PCT.get(job.job_type, 60.0))
