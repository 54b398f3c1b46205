"""The one job state machine: a requested transition plus the job's current row give the next row, or a refusal.

Pure (no I/O), so every path into a state — HTTP, scheduler, agent reports, node loss — is checked the same way
against `TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from orchestrator.jobs.model import Job
from services.schemas import FINAL_STATES, JobState
from services.schemas.base import utcnow
from services.schemas.jobs import TRANSITIONS


@dataclass
class Transition:
    """A request to move one job to `to`. Guards say when it applies; the rest are the values it brings."""

    job_id: str
    to: JobState
    source: Literal["orchestrator", "agent"] = "orchestrator"
    reason: str | None = None
    time: datetime | None = None
    only_from: frozenset[JobState] | None = None  # apply only from one of these states
    only_attempt: int | None = None  # apply only while the job is at this attempt
    node: str | None = None  # agent reports: the reporting node, which must be the job's node
    attempt: int | None = None  # the attempt an agent report belongs to (informational)
    # Values: SCHEDULED takes node/assignment/placement; RUNNING takes pid; final states take the outcome.
    assign_node: str | None = None
    assignment: list[dict[str, Any]] | None = None
    placement: dict[str, Any] | None = None
    pid: int | None = None
    exit_code: int | None = None
    result: Any = None
    error: str | None = None


@dataclass
class Applied:
    transition: Transition
    job: Job  # the job after the transition
    prev: JobState
    duration_s: float
    prev_node: str | None = None  # where the job was before (a job sent back to the queue has none after)


class Refused(Exception):
    """The transition does not apply; `duplicate` when the job is already in that state (a redelivery)."""

    def __init__(self, reason: str, *, duplicate: bool = False, stale_node: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.duplicate = duplicate
        self.stale_node = stale_node


def advance(job: Job, t: Transition, now: datetime | None = None) -> Applied:
    """The job after `t`, or Refused. Never mutates `job`."""
    cur = job.state
    if t.source == "agent" and (t.node is None or t.node != job.node):
        # A report from a node the job is not (or no longer) assigned to: a stray or a late report.
        raise Refused(f"reported by node {t.node!r}, job is assigned to {job.node!r}", stale_node=True)
    if t.source == "agent" and t.attempt is not None and t.attempt != job.attempt:
        # Same node, another attempt: the agent runs one attempt of a job at a time, so this is old news.
        raise Refused(f"report of attempt {t.attempt}, job is at attempt {job.attempt}")
    if t.source == "agent" and t.to == JobState.RUNNING and cur in FINAL_STATES:
        # This attempt's RUNNING report, arriving after its final one (redelivered late): old news.
        raise Refused(f"late RUNNING report: job is already {cur.value}", duplicate=True)
    if t.only_from is not None and cur not in t.only_from:
        raise Refused(f"job is {cur.value}, not {'/'.join(sorted(s.value for s in t.only_from))}",
                      duplicate=cur == t.to)
    if t.only_attempt is not None and job.attempt != t.only_attempt:
        raise Refused(f"job is at attempt {job.attempt}, not {t.only_attempt}")
    if cur == t.to:
        raise Refused(f"job is already {cur.value}", duplicate=True)
    if t.to not in TRANSITIONS[cur]:
        raise Refused(f"{cur.value} -> {t.to.value} is not a valid transition")
    at = t.time or now or utcnow()
    duration = max(0.0, (at - job.state_since).total_seconds())
    changes: dict[str, Any] = {"state": t.to, "state_since": at, "reason": t.reason}
    if t.to == JobState.SCHEDULED:
        changes.update(attempt=job.attempt + 1, node=t.assign_node, assignment=t.assignment, placement=t.placement,
                       scheduled_at=at, started_at=None, finished_at=None, pid=None, exit_code=None, result=None,
                       error=None)
    elif t.to == JobState.RUNNING:
        changes.update(started_at=at, pid=t.pid)
    elif t.to == JobState.PENDING:
        # Back to the queue: the previous assignment is history (kept in job_events), not a current fact.
        changes.update(node=None, assignment=None, placement=None, pid=None, scheduled_at=None, started_at=None)
    elif t.to == JobState.LOST:
        changes.update(lost_count=job.lost_count + 1, error=t.error)
    if t.to in FINAL_STATES:
        changes.update(finished_at=at, exit_code=t.exit_code, result=t.result, error=t.error)
        if t.to != JobState.SUCCEEDED and t.error is None:
            changes["error"] = t.reason
    return Applied(t, job.copy(**changes), cur, duration, job.node)
