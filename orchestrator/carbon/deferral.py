"""Carbon-aware deferral: may a deferrable job start now, or wait for a cleaner window before its deadline?

The latest start of a job is `deadline - max_duration_s` (it must be able to finish in time even if it runs
its full limit), or `submitted_at + defer_default_window_s` for a deferrable job with no deadline. Before that,
it waits while some step of the intensity series before the latest start is at least `defer_min_saving_pct`
cleaner than now; it starts at once when no such window exists, when the latest start has come, or when the
job is not deferrable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.carbon.config import CarbonSettings
from orchestrator.carbon.intensity import IntensitySeries


@dataclass(frozen=True)
class DeferDecision:
    start: bool
    reason: str
    intensity_now: float
    best_intensity: float | None = None
    wait_until: datetime | None = None  # when the cleaner window begins (start=False)
    latest_start: datetime | None = None


def job_terms(job: Any) -> tuple[bool, datetime | None, float, datetime | None]:
    """(deferrable, deadline, max_duration_s, submitted_at) of a jobs.Job, a JobSpec, or a mapping."""
    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    spec = get(job, "spec")
    if spec is None or isinstance(spec, str):
        spec = job
    deferrable = bool(get(spec, "deferrable"))
    deadline = get(spec, "deadline")
    if isinstance(deadline, str):
        deadline = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
    max_duration = get(job, "max_duration_s") or get(spec, "max_duration_s") or 0
    submitted = get(job, "submitted_at")
    return deferrable, deadline, float(max_duration), submitted


def decide(series: IntensitySeries, settings: CarbonSettings, *, deferrable: bool, deadline: datetime | None,
           max_duration_s: float, submitted_at: datetime | None, now: datetime | None = None) -> DeferDecision:
    now = now or datetime.now(UTC)
    t = now.timestamp()
    cur = series.at(t)
    if not deferrable:
        return DeferDecision(True, "not deferrable", cur)
    if not settings.defer_enabled:
        return DeferDecision(True, "carbon-aware deferral is disabled", cur)
    if deadline is not None:
        latest = deadline - timedelta(seconds=max_duration_s)
    elif submitted_at is not None:
        latest = submitted_at + timedelta(seconds=settings.defer_default_window_s)
    else:
        return DeferDecision(True, "deferrable but neither deadline nor submission time known", cur)
    if latest <= now:
        return DeferDecision(True, "latest start reached: it must run now to meet its deadline", cur,
                             latest_start=latest)
    best_t, best = series.cleanest(t, latest.timestamp())
    if best_t <= t or best > cur * (1.0 - settings.defer_min_saving_pct / 100.0):
        return DeferDecision(True, f"now ({cur:g} g/kWh) is within {settings.defer_min_saving_pct:g} % of the "
                                   f"cleanest window before its latest start ({best:g} g/kWh)", cur, best,
                             latest_start=latest)
    wait_until = datetime.fromtimestamp(best_t, UTC)
    return DeferDecision(False, f"waiting for {best:g} g/kWh from {wait_until.isoformat()} (now {cur:g} g/kWh)",
                         cur, best, wait_until, latest)
