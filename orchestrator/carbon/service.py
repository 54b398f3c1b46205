"""The carbon component, in `rt.components["carbon"]`: reports (energy and emissions), the intensity series
(reloaded when its CSV changes), and `may_start_now(job)` / `decision(job)` for the scheduler's deferrable jobs."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge

from orchestrator.carbon import energy
from orchestrator.carbon.config import CarbonSettings
from orchestrator.carbon.deferral import DeferDecision, decide, job_terms
from orchestrator.carbon.intensity import IntensitySeries, load_csv
from orchestrator.errors import InvalidRequest
from orchestrator.runtime import Runtime
from services.errors import ConfigError
from services.schemas.carbon import (
    CarbonPoint,
    CarbonReport,
    CarbonRow,
    IntensityInfo,
    IntensityPoint,
    IntensityReport,
)

log = logging.getLogger("aether.carbon")

MAX_SERIES_POINTS = 5000


class CarbonService:
    def __init__(self, settings: CarbonSettings, rt: Runtime | None = None) -> None:
        self.s = settings
        self.rt = rt
        self._mtime: float | None = None
        if settings.intensity_csv is not None:
            # A configured file that cannot be read stops the start-up: emissions must not silently be 0.
            self.series = load_csv(settings.intensity_csv)
            self._mtime = settings.intensity_csv.stat().st_mtime
        else:
            self.series = IntensitySeries.constant(settings.intensity_g_per_kwh)
        self.m_intensity = self.m_deferred = None
        if rt is not None:
            r = rt.metrics.registry
            self.m_intensity = Gauge("aether_carbon_intensity_g_per_kwh", "Grid carbon intensity now", registry=r)
            self.m_intensity.set_function(lambda: self.series.at(time.time()))
            self.m_deferred = Counter("aether_carbon_deferrals_total",
                                      "Decisions to hold a deferrable job for a cleaner window", registry=r)

    # ---- intensity ---------------------------------------------------------------------------------------------
    async def reload_loop(self) -> None:
        path = self.s.intensity_csv
        if path is None:
            return
        while True:
            await asyncio.sleep(self.s.reload_interval_s)
            try:
                mtime = (await asyncio.to_thread(path.stat)).st_mtime
                if mtime == self._mtime:
                    continue
                self.series = await asyncio.to_thread(load_csv, path)
                self._mtime = mtime
                log.info("carbon intensity reloaded", extra={"path": str(path), "rows": len(self.series.times)})
            except (OSError, ConfigError) as exc:
                # Keep the series we have: a half-written forecast must not zero the emissions.
                log.error("carbon intensity CSV not reloaded; keeping the previous series",
                          extra={"path": str(path), "error": getattr(exc, "message", repr(exc))})

    def intensity(self, start: datetime, end: datetime) -> IntensityReport:
        s, e = start.timestamp(), end.timestamp()
        times, values = self.series.window(s, e)
        if len(times) > MAX_SERIES_POINTS:
            raise InvalidRequest(f"the range holds {len(times)} intensity steps, over {MAX_SERIES_POINTS}; "
                                 "ask for a shorter range", field="to")
        best_t, best = self.series.cleanest(s, e)
        now = time.time()
        return IntensityReport(
            source=self.series.source, region=self.s.region,
            now=IntensityPoint(time=datetime.fromtimestamp(now, UTC), g_per_kwh=self.series.at(now)),
            cleanest=IntensityPoint(time=datetime.fromtimestamp(best_t, UTC), g_per_kwh=best),
            points=[IntensityPoint(time=datetime.fromtimestamp(t, UTC), g_per_kwh=v) for t, v in zip(times, values,
                                                                                                    strict=True)])

    # ---- deferral ----------------------------------------------------------------------------------------------
    async def decision(self, job: Any, now: datetime | None = None) -> DeferDecision:
        """Whether a job may start now; for a deferrable job, also until when it should wait and why."""
        deferrable, deadline, max_duration, submitted = job_terms(job)
        d = decide(self.series, self.s, deferrable=deferrable, deadline=deadline, max_duration_s=max_duration,
                   submitted_at=submitted, now=now)
        if not d.start and self.m_deferred is not None:
            self.m_deferred.inc()
        return d

    async def may_start_now(self, job: Any, now: datetime | None = None) -> bool:
        """For the scheduler: False while a deferrable job should keep waiting for a cleaner window."""
        return (await self.decision(job, now)).start

    # ---- reports -----------------------------------------------------------------------------------------------
    def _source(self, start: datetime, end: datetime, source: str, gpus: list[str] | None,
                jobs: list[str] | None) -> str:
        if source in ("raw", "rollup"):
            return source
        # Raw samples are exact to the second; the rollup reads 60 times fewer rows. Estimate the rows at 1 Hz.
        if gpus:
            n = len(gpus)
        elif jobs:
            n = 8 * len(jobs)
        else:
            n = max(1, len(self.rt.cluster.gpus)) if self.rt is not None else 1
        return "raw" if (end - start).total_seconds() * n <= self.s.raw_max_samples else "rollup"

    async def report(self, conn, *, by: str, start: datetime, end: datetime, source: str = "auto",
                     bucket_s: float | None = None, gpus: list[str] | None = None,
                     jobs: list[str] | None = None) -> CarbonReport:
        if end <= start:
            raise InvalidRequest("`to` must be after `from`", field="to")
        if end - start > timedelta(days=self.s.max_range_days):
            raise InvalidRequest(f"range over {self.s.max_range_days:g} days", field="from")
        if bucket_s is not None and (end - start).total_seconds() / bucket_s > MAX_SERIES_POINTS:
            raise InvalidRequest(f"more than {MAX_SERIES_POINTS} buckets: use a larger bucket", field="bucket")
        src = self._source(start, end, source, gpus, jobs)
        thresholds, values = self.series.sql_arrays(start.timestamp(), end.timestamp())
        common = dict(source=src, start=start, end=end, max_gap_s=self.s.max_gap_s, thresholds=thresholds,
                      intensities=values, gpus=gpus)
        pue = self.s.pue
        # Each pass reads every sample in the range once: run only those needed (GPU rows and series buckets
        # both add up to the cluster total).
        async with asyncio.timeout(self.s.query_timeout_s):
            series = pts = None
            if bucket_s is not None:
                pts = await energy.totals(conn, by="cluster", bucket_s=bucket_s, **common)
                series = [CarbonPoint(time=p["bucket"], energy_kwh=(p["joules"] or 0.0) / energy.J_PER_KWH,
                                      co2_g=(p["grams"] or 0.0) * pue) for p in pts]
            if by == "cluster" and pts is not None:
                rows = [{"key": "cluster", "node": None, "joules": sum(p["joules"] or 0.0 for p in pts),
                         "grams": sum(p["grams"] or 0.0 for p in pts),
                         "covered_s": sum(p["covered_s"] or 0.0 for p in pts)}]
            else:
                rows = await energy.totals(conn, by=by, jobs=jobs, **common)
            if by in ("gpu", "cluster"):
                total_j = sum(r["joules"] or 0.0 for r in rows)
                total_g = sum(r["grams"] or 0.0 for r in rows) * pue
            else:
                cluster = (await energy.totals(conn, by="cluster", **common))[0]
                total_j, total_g = cluster["joules"] or 0.0, (cluster["grams"] or 0.0) * pue
        out = [CarbonRow(key=str(r["key"]), node=r["node"], energy_kwh=(r["joules"] or 0.0) / energy.J_PER_KWH,
                         co2_g=(r["grams"] or 0.0) * pue, covered_s=r["covered_s"] or 0.0)
               for r in rows if r["key"] is not None and r["joules"] is not None]
        out.sort(key=lambda row: row.co2_g, reverse=True)
        report = CarbonReport(
            by=by, start=start, end=end, source=src,
            intensity=IntensityInfo(source=self.series.source, region=self.s.region,
                                    now_g_per_kwh=self.series.at(time.time()),
                                    mean_g_per_kwh=self.series.mean(start.timestamp(), end.timestamp()), pue=pue),
            total_energy_kwh=total_j / energy.J_PER_KWH, total_co2_g=total_g, rows=out, series=series)
        if by in ("job", "tenant") and not jobs and not gpus:
            report.unattributed_energy_kwh = max(0.0, report.total_energy_kwh - sum(r.energy_kwh for r in out))
            report.unattributed_co2_g = max(0.0, report.total_co2_g - sum(r.co2_g for r in out))
        return report


async def start(rt: Runtime) -> None:
    svc = CarbonService(rt.settings.carbon, rt)
    rt.components["carbon"] = svc
    rt.spawn(svc.reload_loop(), "carbon-reload")
    log.info("carbon accounting ready", extra={"intensity": svc.series.source, "region": rt.settings.carbon.region})
