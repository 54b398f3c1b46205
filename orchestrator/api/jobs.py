"""Jobs over HTTP: submit, list, read, follow logs (server-sent events), cancel."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from orchestrator.auth import Principal, bearer, require
from orchestrator.errors import Forbidden, InvalidJob, InvalidRequest, OrchestratorError
from orchestrator.jobs import db, live, store
from orchestrator.jobs.service import JobService
from services.errors import AetherError
from services.schemas import JobSpec, JobState
from services.schemas.jobs import TENANT_RE

router = APIRouter(tags=["jobs"])

IDEMPOTENCY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
_SPEC_SCHEMA = JobSpec.model_json_schema()
_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "job_id": {"type": "string"},
                   "field": {"type": "string"}, "details": {"type": "object"}}}}}}


_require_submitter = require("submitter")


async def _submitter(request: Request) -> Principal:
    """`require("submitter")` as a coroutine: FastAPI runs a plain-function dependency in its thread pool, and at
    hundreds of submissions a second those hops (and the GIL handovers) cost more than the check itself."""
    return _require_submitter(request)


def _svc(request: Request) -> JobService:
    return request.app.state.rt.components["jobs"]


class PayloadTooLarge(OrchestratorError):
    code = "PAYLOAD_TOO_LARGE"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes, over the {limit} byte limit")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise PayloadTooLarge(f"request body is over the {limit} byte limit")
    except ClientDisconnect:
        raise InvalidRequest("the client went away before sending the whole body") from None
    return bytes(body)


def _nul_field(value: Any, path: str = "") -> str | None:
    """Where a NUL character hides in a decoded spec (PostgreSQL text and jsonb cannot hold one)."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _nul_field(k, path) or _nul_field(v, f"{path}.{k}" if path else str(k))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _nul_field(v, f"{path}.{i}")
            if found is not None:
                return found
    return None


def _parse_spec(body: bytes) -> JobSpec:
    if not body.strip():
        raise InvalidJob("the body must be a JSON job spec; it is empty")
    try:
        spec = JobSpec.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        if first.get("type") == "json_invalid":
            raise InvalidJob(f"the body is not valid JSON: {first.get('msg')}") from None
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise InvalidJob(f"{field or 'job'}: {msg}", field=field, details={"errors": [
            {"field": ".".join(str(p) for p in e.get("loc", ())),
             "msg": str(e.get("msg")).removeprefix("Value error, ")} for e in errors[:20]]}) from None
    # JSON can carry a NUL only as the escape \u0000 (or raw, which the parser refuses): without either in the
    # body, the walk over the whole spec is skipped.
    field = _nul_field(spec.model_dump(mode="json")) if b"\\u0000" in body or b"\x00" in body else None
    if field is not None:
        raise InvalidJob(f"{field}: NUL characters are not allowed", field=field.split(".")[0] or None)
    return spec


@router.post("/v1/jobs", status_code=201, summary="Submit a job", responses={
    201: {"description": "accepted", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"job_id": {"type": "string"}, "state": {"type": "string"}}}}}},
    200: {"description": "an earlier submission with the same Idempotency-Key"},
    401: _ERROR, 403: _ERROR, 413: _ERROR, 422: _ERROR, 429: _ERROR, 503: _ERROR},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _SPEC_SCHEMA}}},
                   "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                   "schema": {"type": "string", "maxLength": 128},
                                   "description": "a retried submission with the same key returns the same job"}]})
async def submit_job(request: Request, response: Response,
                     principal: Principal = Depends(_submitter)) -> dict[str, Any]:
    response.status_code, body = await admit(request, principal)
    return body


async def admit(request: Request, principal: Principal) -> tuple[int, dict[str, Any]]:
    """The submission itself, for the route above and its fast lane (orchestrator/api/fastlane.py): the status
    (201 new, 200 an earlier submission with the same Idempotency-Key) and the body."""
    svc = _svc(request)
    try:
        spec = _parse_spec(await _read_body(request, request.app.state.rt.settings.job_max_body_bytes))
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_RE.match(key):
            raise InvalidJob("Idempotency-Key must be 1-128 printable ASCII characters", field="Idempotency-Key")
        admitted = await svc.submit(spec, principal, key)
    except AetherError as exc:
        svc.metrics.refused.labels(exc.code).inc()
        raise
    return (201 if admitted.created else 200), {"job_id": admitted.job.id, "state": admitted.job.state.value}


def _states(state: str | None) -> list[str] | None:
    if not state:
        return None
    out = []
    for s in state.split(","):
        s = s.strip().upper()
        if s not in JobState.__members__:
            raise InvalidRequest(f"state {s!r} is not one of {', '.join(JobState.__members__)}", field="state")
        out.append(s)
    return out


@router.get("/v1/jobs", summary="List jobs, newest first", responses={401: _ERROR, 403: _ERROR, 422: _ERROR})
async def list_jobs(request: Request, state: str | None = Query(None, description="e.g. RUNNING or PENDING,RUNNING"),
                    tenant: str | None = Query(None, max_length=64, pattern=TENANT_RE.pattern),
                    limit: int = Query(100, ge=1, le=1000),
                    principal: Principal = Depends(require("viewer"))) -> list[dict[str, Any]]:
    jobs = await _svc(request).list(principal, states=_states(state), tenant=tenant, limit=limit)
    return [j.summary() for j in jobs]


@router.get("/v1/jobs/{job_id}", summary="One job: state, GPU, placement, outcome, timestamps",
            responses={401: _ERROR, 404: _ERROR})
async def get_job(job_id: str, request: Request, principal: Principal = Depends(require("viewer"))) -> dict[str, Any]:
    return (await _svc(request).get(job_id, principal)).view()


@router.get("/v1/jobs/{job_id}/events", summary="Every state transition of a job", responses={401: _ERROR, 404: _ERROR})
async def job_events(job_id: str, request: Request,
                     principal: Principal = Depends(require("viewer"))) -> list[dict[str, Any]]:
    svc = _svc(request)
    await svc.get(job_id, principal)
    async with db.connection(svc.rt) as conn:
        rows = await store.events(conn, job_id)
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]


def _viewer_from_header_or_query(request: Request) -> Principal:
    # Browsers' EventSource cannot set headers: the token may also come as `?token=`.
    principal = request.app.state.rt.auth.identify(bearer(request) or request.query_params.get("token"))
    if not principal.at_least("viewer"):
        raise Forbidden("this needs the viewer role")
    return principal


@router.get("/v1/jobs/{job_id}/logs", summary="A job's output; ?follow=true streams it (SSE) until the job ends",
            responses={401: _ERROR, 404: _ERROR})
async def job_logs(job_id: str, request: Request, follow: bool = False,
                   attempt: int | None = Query(None, ge=1, le=1_000_000),
                   limit: int = Query(10000, ge=1, le=100_000),
                   token: str | None = Query(None, description="alternative to the Authorization header"),
                   principal: Principal = Depends(_viewer_from_header_or_query)):
    svc = _svc(request)
    job = await svc.get(job_id, principal)
    if follow:
        return StreamingResponse(live.follow(svc.rt, job_id, limit_lines=limit), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    async with db.connection(svc.rt) as conn:
        rows = await store.logs(conn, job_id, attempt=attempt, limit=limit)
    lines = [{"attempt": r["attempt"], "seq": r["seq"], "stream": r["stream"], "line": r["line"],
              "time": r["time"].isoformat()} for r in rows]
    return {"job_id": job_id, "state": job.state.value, "lines": lines, "truncated": len(lines) >= limit}


@router.delete("/v1/jobs/{job_id}", summary="Cancel a job (its whole process group is killed)",
               responses={200: {"description": "cancelled"}, 202: {"description": "cancel sent to the node"},
                          401: _ERROR, 404: _ERROR, 409: _ERROR})
async def cancel_job(job_id: str, request: Request, principal: Principal = Depends(require("submitter"))):
    job = await _svc(request).cancel(job_id, principal)
    body = {"job_id": job.id, "state": job.state.value, "cancel_requested": True}
    return JSONResponse(body, status_code=200 if job.state == JobState.CANCELLED else 202)
