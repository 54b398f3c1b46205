"""Carbon over HTTP: energy and emissions by GPU, job, tenant or cluster (optionally as a series for charts), and
the carbon intensity series with its cleanest window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from orchestrator.auth import Principal, require
from orchestrator.errors import InvalidRequest, OrchestratorError
from services.schemas.carbon import CarbonReport, IntensityReport

router = APIRouter()


class CarbonNotRunning(OrchestratorError):
    code = "NOT_FOUND"


def _range(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"`{name}` must carry a timezone (e.g. 2026-01-01T00:00:00Z)", field=name)
    end = (end or datetime.now(UTC)).astimezone(UTC)
    start = (start or end - default).astimezone(UTC)
    return start, end


def _svc(request: Request):
    svc = request.app.state.rt.components.get("carbon")
    if svc is None:
        raise CarbonNotRunning("carbon accounting is not running on this orchestrator")
    return svc


@router.get("/v1/carbon", response_model=CarbonReport)
async def carbon(request: Request,
                 start: datetime | None = Query(None, alias="from", description="default: 24 h before `to`"),
                 end: datetime | None = Query(None, alias="to", description="default: now"),
                 by: Literal["gpu", "job", "tenant", "cluster"] = "cluster",
                 bucket: float | None = Query(None, ge=60, le=30 * 86400,
                                              description="seconds: add a cluster series for charts"),
                 source: Literal["auto", "raw", "rollup"] = "auto",
                 gpu: list[str] | None = Query(None, max_length=1000, description="only these GPUs"),
                 job: list[str] | None = Query(None, max_length=1000, description="only these jobs (by=job|tenant)"),
                 who: Principal = Depends(require("viewer"))) -> CarbonReport:
    """Energy in kWh and emissions in gCO2e over [from, to). A tenant's token sees its own jobs and tenant only."""
    start, end = _range(start, end, timedelta(days=1))
    rt = request.app.state.rt
    svc = _svc(request)
    async with rt.db() as conn:
        report = await svc.report(conn, by=by, start=start, end=end, source=source, bucket_s=bucket, gpus=gpu,
                                  jobs=job)
    if who.tenant is not None and by in ("job", "tenant"):
        # Per-job and per-tenant figures belong to their tenant; cluster and GPU totals are infrastructure.
        if by == "tenant":
            report.rows = [r for r in report.rows if r.key == who.tenant]
        else:
            async with rt.db() as conn:
                mine = {r["id"] for r in await conn.fetch("SELECT id FROM jobs WHERE tenant = $1 AND id = ANY($2)",
                                                          who.tenant, [r.key for r in report.rows])}
            report.rows = [r for r in report.rows if r.key in mine]
        report.unattributed_energy_kwh = report.unattributed_co2_g = None
    return report


@router.get("/v1/carbon/intensity", response_model=IntensityReport)
async def intensity(request: Request,
                    start: datetime | None = Query(None, alias="from", description="default: now"),
                    end: datetime | None = Query(None, alias="to", description="default: 24 h after `from`"),
                    _: Principal = Depends(require("viewer"))) -> IntensityReport:
    """The intensity steps in the range (a CSV's future rows are its forecast) and the cleanest one."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"`{name}` must carry a timezone (e.g. 2026-01-01T00:00:00Z)", field=name)
    start = (start or datetime.now(UTC)).astimezone(UTC)
    end = (end or start + timedelta(days=1)).astimezone(UTC)
    if end <= start:
        raise InvalidRequest("`to` must be after `from`", field="to")
    return _svc(request).intensity(start, end)
