"""A job as the orchestrator holds it: one row of `jobs`, its API view, and a short summary for live clients."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from functools import cached_property
from typing import Any

import orjson

from services.schemas import JobSpec, JobState

ACTIVE_STATES = (JobState.PENDING, JobState.SCHEDULED, JobState.RUNNING)
ON_NODE_STATES = frozenset({JobState.SCHEDULED, JobState.RUNNING})
JOB_ID_RE = re.compile(r"^j[0-9a-f]{16}$")


def new_job_id() -> str:
    # 64 random bits: ids are unguessable and safe as a NATS subject token.
    return "j" + secrets.token_hex(8)


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _unjson(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


@dataclass
class Job:
    id: str
    name: str
    tenant: str
    spec_json: str
    job_type: str
    priority: int
    gpus: int
    gpu_mem_mb: int
    max_duration_s: int
    state: JobState
    submitted_at: datetime
    state_since: datetime
    model: str | None = None
    submitted_by: str | None = None
    idempotency_key: str | None = None
    attempt: int = 0
    lost_count: int = 0
    node: str | None = None
    assignment: list[dict[str, Any]] | None = None  # [{"uuid", "index"}] on `node`
    placement: dict[str, Any] | None = None
    exit_code: int | None = None
    result: Any = None
    error: str | None = None
    reason: str | None = None
    pid: int | None = None
    cancel_requested_at: datetime | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def spec(self) -> JobSpec:
        return JobSpec.model_validate_json(self.spec_json)

    @cached_property
    def deferrable(self) -> bool:
        return self.spec.deferrable

    @property
    def gpu_uuids(self) -> list[str]:
        return [a["uuid"] for a in self.assignment or []]

    @property
    def gpu_indices(self) -> list[int]:
        return [int(a["index"]) for a in self.assignment or []]

    @classmethod
    def from_spec(cls, job_id: str, spec: JobSpec, tenant: str, submitted_by: str | None, now: datetime,
                  idempotency_key: str | None = None) -> Job:
        spec = spec.model_copy(update={"tenant": tenant})
        job = cls(id=job_id, name=spec.name, tenant=tenant, spec_json=spec.model_dump_json(),
                  job_type=spec.job_type, priority=spec.priority, gpus=spec.gpus, gpu_mem_mb=spec.gpu_mem_mb,
                  max_duration_s=spec.max_duration_s, state=JobState.PENDING, submitted_at=now, state_since=now,
                  model=spec.model, submitted_by=submitted_by, idempotency_key=idempotency_key)
        job.__dict__["spec"] = spec  # already parsed: spare the scheduler a second parse
        return job

    @classmethod
    def from_row(cls, row: Any) -> Job:
        spec = row["spec"]
        return cls(
            id=row["id"], name=row["name"], tenant=row["tenant"],
            spec_json=spec if isinstance(spec, str) else orjson.dumps(spec).decode(),
            job_type=row["job_type"], priority=row["priority"], gpus=row["gpus"], gpu_mem_mb=row["gpu_mem_mb"],
            max_duration_s=row["max_duration_s"], state=JobState(row["state"]), submitted_at=row["submitted_at"],
            state_since=row["state_since"], model=row["model"], submitted_by=row["submitted_by"],
            idempotency_key=row["idempotency_key"], attempt=row["attempt"], lost_count=row["lost_count"],
            node=row["node"], assignment=_unjson(row["assignment"]), placement=_unjson(row["placement"]),
            exit_code=row["exit_code"], result=_unjson(row["result"]), error=row["error"], reason=row["reason"],
            pid=row["pid"], cancel_requested_at=row["cancel_requested_at"], scheduled_at=row["scheduled_at"],
            started_at=row["started_at"], finished_at=row["finished_at"])

    def copy(self, **changes: Any) -> Job:
        new = replace(self, **changes)
        if "spec_json" not in changes:  # keep what was parsed from the spec: parsing is the costly part
            for name in ("spec", "deferrable"):
                if name in self.__dict__:
                    new.__dict__[name] = self.__dict__[name]
        return new

    def row_values(self) -> tuple:
        """One job's values for store.UPDATE_JOBS (mutable columns), in its order."""
        return (self.id, self.state.value, self.attempt, self.lost_count, self.node, _json(self.assignment),
                _json(self.placement), self.exit_code, _json(self.result), self.error, self.reason, self.pid,
                self.cancel_requested_at, self.scheduled_at, self.started_at, self.finished_at, self.state_since)

    def new_row_values(self) -> tuple:
        """A new job's whole row for store.INSERT_JOBS, in its order: what it was submitted with, then its state
        (store.UPDATE_JOBS's columns after the id)."""
        return (self.id, self.name, self.tenant, self.submitted_by, self.idempotency_key, self.spec_json,
                self.job_type, self.model, self.priority, self.gpus, self.gpu_mem_mb, self.max_duration_s,
                self.submitted_at, *self.row_values()[1:])

    def gpu_views(self) -> list[dict[str, Any]]:
        return [{"node": self.node, "uuid": a["uuid"], "index": a["index"]} for a in self.assignment or []]

    def summary(self) -> dict[str, Any]:
        """What live clients get on every change: small, no spec."""
        gpus = self.gpu_views()
        return {
            "job_id": self.id, "name": self.name, "tenant": self.tenant, "state": self.state.value,
            "priority": self.priority, "job_type": self.job_type, "gpus_requested": self.gpus,
            "gpu_mem_mb": self.gpu_mem_mb, "attempt": self.attempt, "node": self.node,
            "gpu": gpus[0] if gpus else None, "assigned_gpus": gpus, "exit_code": self.exit_code,
            "error": self.error, "reason": self.reason, "submitted_at": _iso(self.submitted_at),
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
            "cancel_requested": self.cancel_requested_at is not None,
        }

    def view(self) -> dict[str, Any]:
        """GET /v1/jobs/{id}: everything, including the spec, the placement and the result."""
        out = self.summary()
        out.update({
            "model": self.model, "max_duration_s": self.max_duration_s, "submitted_by": self.submitted_by,
            "lost_count": self.lost_count, "placement": self.placement, "result": self.result, "pid": self.pid,
            "scheduled_at": _iso(self.scheduled_at), "state_since": _iso(self.state_since),
            "cancel_requested_at": _iso(self.cancel_requested_at), "spec": orjson.loads(self.spec_json),
        })
        return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


JOB_COLUMNS = tuple(f.name for f in fields(Job) if f.name not in ("spec_json", "extra"))
