"""Alerts over HTTP: list with filters (viewer), acknowledge and resolve by hand (operator)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from orchestrator.alerts import store
from orchestrator.auth import Principal, require
from orchestrator.errors import AlertNotFound, InvalidRequest
from services.schemas import Alert, AlertSeverity, AlertState

router = APIRouter()

# Alert ids are bigserial: a larger number cannot be one, and would overflow the query (a 500) if let through.
ID_MAX = 2**63 - 1
AlertId = Annotated[int, Path(ge=1, le=ID_MAX)]


def _svc(request: Request):
    svc = request.app.state.rt.components.get("alerts")
    if svc is None:
        raise AlertNotFound("alerts are not running on this orchestrator")
    return svc


@router.get("/v1/alerts", response_model=list[Alert])
async def list_alerts(request: Request, state: AlertState | None = None, severity: AlertSeverity | None = None,
                      node: str | None = Query(None, max_length=64), gpu: str | None = Query(None, max_length=128),
                      rule: str | None = Query(None, max_length=64),
                      since: datetime | None = Query(None, description="alerts still open at or after this time"),
                      until: datetime | None = Query(None, description="alerts opened before this time"),
                      before_id: int | None = Query(None, ge=1, le=ID_MAX, description="page: alerts older than this id"),
                      limit: int = Query(200, ge=1, le=1000),
                      _: Principal = Depends(require("viewer"))) -> list[Alert]:
    """Newest first. `state=open` lists what needs attention now."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name} must carry a timezone (e.g. 2026-01-01T00:00:00Z)", field=name)
    rt = request.app.state.rt
    async with rt.db() as conn:
        rows = await store.query(conn, state=state.value if state else None,
                                 severity=severity.value if severity else None, node=node, gpu_uuid=gpu, rule=rule,
                                 since=since, until=until, limit=limit, before_id=before_id)
    return [r.to_model() for r in rows]


@router.get("/v1/alerts/{alert_id}", response_model=Alert)
async def get_alert(alert_id: AlertId, request: Request, _: Principal = Depends(require("viewer"))) -> Alert:
    async with request.app.state.rt.db() as conn:
        row = await store.get(conn, alert_id)
    if row is None:
        raise AlertNotFound(f"no alert {alert_id}")
    return row.to_model()


@router.post("/v1/alerts/{alert_id}/ack", response_model=Alert)
async def acknowledge(alert_id: AlertId, request: Request, who: Principal = Depends(require("operator"))) -> Alert:
    """Acknowledge: someone is on it. Idempotent; the first acknowledgement's time and author are kept."""
    return await _svc(request).acknowledge(alert_id, who.name)


@router.post("/v1/alerts/{alert_id}/resolve", response_model=Alert)
async def resolve(alert_id: AlertId, request: Request, who: Principal = Depends(require("operator"))) -> Alert:
    """Resolve by hand an alert whose subject is gone for good (a decommissioned node); if the condition still
    holds, the rule opens a new alert."""
    return await _svc(request).resolve_manually(alert_id, who.name)
