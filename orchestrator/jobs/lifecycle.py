"""Applies job transitions: lock the rows, run them through the state machine, persist rows and events in one
transaction, then log, publish on NATS, push to live clients and tell the scheduler's listeners."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import asyncpg

from orchestrator.jobs import db, store
from orchestrator.jobs.leader import NotLeader, not_leader
from orchestrator.jobs.metrics import JobMetrics
from orchestrator.jobs.model import Job
from orchestrator.jobs.states import Applied, Refused, Transition, advance
from orchestrator.runtime import Runtime
from services import subjects
from services.schemas import FINAL_STATES, JobState, JobStateEvent, SchedulerHint
from services.schemas.base import utcnow

log = logging.getLogger("aether.jobs.lifecycle")

Listener = Callable[[list[Applied]], None]


class Lifecycle:
    def __init__(self, rt: Runtime, metrics: JobMetrics) -> None:
        self.rt = rt
        self.metrics = metrics
        self.listeners: list[Listener] = []

    def after_lost(self, job: Job) -> Transition:
        """What follows LOST, in the same transaction: back to the queue while retries remain, else FAILED."""
        if job.cancel_requested_at is not None:
            return Transition(job.id, JobState.FAILED, reason="lost after a cancel was requested",
                              only_from=frozenset({JobState.LOST}))
        if job.lost_count <= self.rt.settings.job_max_retries:
            return Transition(job.id, JobState.PENDING, only_from=frozenset({JobState.LOST}),
                              reason=f"re-queued after loss {job.lost_count} of at most "
                                     f"{self.rt.settings.job_max_retries}")
        return Transition(job.id, JobState.FAILED, only_from=frozenset({JobState.LOST}),
                          reason=f"lost {job.lost_count} times, over the retry limit "
                                 f"({self.rt.settings.job_max_retries})")

    async def apply(self, transitions: Sequence[Transition], *,
                    extra: Callable[[asyncpg.Connection, list[Applied]], Awaitable[None]] | None = None,
                    fence: Callable[[], str] | None = None, logs: Sequence[tuple] = (),
                    ) -> tuple[list[Applied], list[tuple[Transition, Refused]]]:
        """Apply in order (several for one job are fine); returns what applied and what was refused, and why.

        `logs`: log lines (store.insert_logs rows) to store in the same transaction, in the transitions' statement.
        The job rows are locked (store.lock_jobs): a transaction touching the same jobs waits for this one's commit,
        so the two apply in order. `fence` (the scheduler lease's) gives the statement that proves, inside the
        transaction, that this replica still leads; NotLeader if not."""
        applied: list[Applied] = []
        refused: list[tuple[Transition, Refused]] = []
        if not transitions and extra is None and not logs:
            return applied, refused
        try:
            async with db.transaction(self.rt, first=fence() if fence is not None else None) as conn:
                jobs = await store.lock_jobs(conn, [t.job_id for t in transitions]) if transitions else {}
                for t in transitions:
                    job = jobs.get(t.job_id)
                    if job is None:
                        refused.append((t, Refused("unknown job")))
                        continue
                    if t.to == JobState.LOST and job.cancel_requested_at is not None:
                        # Its node is gone or forgot it, but its owner wanted it stopped anyway: it ends CANCELLED,
                        # never re-queued. (Decided here, on the locked row, so a cancel from any replica counts.)
                        t = replace(t, to=JobState.CANCELLED, reason=f"cancelled; {t.reason}", error=None)
                    try:
                        a = advance(job, t)
                    except Refused as r:
                        refused.append((t, r))
                        continue
                    applied.append(a)
                    if a.job.state == JobState.LOST:
                        a = advance(a.job, self.after_lost(a.job))
                        applied.append(a)
                    jobs[t.job_id] = a.job
                if applied:
                    await store.write_transitions(conn, applied, logs)
                elif logs:
                    await store.insert_logs(conn, logs)
                if extra is not None:  # more writes that must commit (or not) with these transitions
                    await extra(conn, applied)
        except asyncpg.PostgresError as exc:
            if not_leader(exc):
                raise NotLeader("this replica no longer holds the scheduler lease") from None
            raise
        await self.announce(applied)
        return applied, refused

    async def apply_known(self, transitions: Sequence[Transition], known: Callable[[str], Job | None], *,
                          held: Callable[[], str], logs: Sequence[tuple] = (),
                          ) -> tuple[list[Applied], list[Transition], bool]:
        """The scheduler leader's fast way for agents' reports: decide on its own copies of the jobs (`known`), and
        write in ONE statement that commits on its own (`store.write_if_unchanged`: one round trip, where `apply`'s
        locked transaction takes four). A job is written only if its row is still what the copy says, and nothing
        unless `held` (the lease, as an SQL condition) holds; NotLeader if it does not.

        Returns what applied (announced), the transitions left for `apply` - of jobs without a copy, of a copy the
        row no longer matches, or refused on the copy (`apply` refuses them on the row, and says why) - in their
        order, and whether `logs` were stored."""
        was: dict[str, Job] = {}
        now: dict[str, Job] = {}
        applied: list[Applied] = []
        rest_ids: set[str] = set()
        for t in transitions:
            job = now.get(t.job_id) or known(t.job_id)
            if job is None or t.job_id in rest_ids or t.to == JobState.LOST:
                rest_ids.add(t.job_id)
                continue
            try:
                a = advance(job, t)
            except Refused:
                rest_ids.add(t.job_id)  # (and its later reports: a job's transitions stay in order)
                continue
            was.setdefault(t.job_id, job)
            now[t.job_id] = a.job
            applied.append(a)
        applied = [a for a in applied if a.job.id not in rest_ids]
        if not applied and not logs:
            return [], list(transitions), False
        try:
            async with db.alone(self.rt) as conn:
                fenced, written = await store.write_if_unchanged(conn, applied, was, held(), logs)
        except asyncpg.PostgresError as exc:
            if not_leader(exc):
                raise NotLeader("this replica no longer holds the scheduler lease") from None
            raise
        if not fenced:
            raise NotLeader("this replica no longer holds the scheduler lease")
        applied = [a for a in applied if a.job.id in written]
        rest_ids |= {t.job_id for t in transitions if t.job_id not in written}
        await self.announce(applied)
        return applied, [t for t in transitions if t.job_id in rest_ids], True

    async def announce(self, applied: list[Applied]) -> None:
        """Committed transitions: log, count, publish (ours), push to live clients, tell the listeners."""
        if not applied:
            return
        m = self.metrics
        latest: dict[str, Job] = {}
        for a in applied:
            job, t = a.job, a.transition
            latest[job.id] = job
            log.info("job transition", extra={
                "job_id": job.id, "from": a.prev.value, "to": job.state.value, "duration_s": round(a.duration_s, 3),
                "attempt": job.attempt, "node": job.node or a.prev_node or t.node, "source": t.source,
                "reason": t.reason,
                "tenant": job.tenant, "exit_code": job.exit_code})
            m.transitions.labels(a.prev.value, job.state.value).inc()
            if job.state in FINAL_STATES:
                m.finished.labels(job.state.value).inc()
                if job.started_at is not None and job.finished_at is not None:
                    m.duration.observe(max(0.0, (job.finished_at - job.started_at).total_seconds()))
            if job.state == JobState.LOST:
                m.lost.inc()
            if t.source == "orchestrator":
                await self._publish(a)
                if a.prev == JobState.PENDING and job.state in FINAL_STATES:
                    await self.hint(job.id, job.state)  # a queued job cancelled: the leader drops it
        if self.rt.hub.clients:  # (building the views costs; nobody may be watching)
            for job in latest.values():
                self.rt.hub.publish({"type": "job", "job": job.summary()}, tenant=job.tenant)
        for listener in self.listeners:
            try:
                listener(applied)
            except Exception:
                log.exception("job listener failed")

    async def submitted(self, jobs: list[Job], *, queued: bool = True) -> None:
        """New jobs were stored PENDING: log, count, publish and push them like any transition. `queued`: they stay
        PENDING (not placed as they were stored), so the scheduler's leader must hear of them."""
        for job in jobs:
            log.info("job transition", extra={"job_id": job.id, "from": None, "to": job.state.value, "duration_s": 0.0,
                                              "attempt": 0, "source": "orchestrator", "reason": "submitted",
                                              "tenant": job.tenant, "job_name": job.name})
            self.metrics.submitted.inc()
            event = JobStateEvent(job_id=job.id, state=job.state, time=job.submitted_at, source="orchestrator",
                                  reason="submitted")
            try:
                await self.rt.nc.publish(subjects.job_state(job.id), event.to_bytes())
            except Exception as exc:
                log.warning("job state event not published", extra={"job_id": job.id, "error": repr(exc)})
            if queued:
                await self.hint(job.id, JobState.PENDING)
            if self.rt.hub.clients:
                self.rt.hub.publish({"type": "job", "job": job.summary()}, tenant=job.tenant)

    async def hint(self, job_id: str, state: JobState) -> None:
        """Tell the scheduler's leader, whichever replica it is, through the jobs stream (so a leader elected a moment
        later still hears it); the periodic sync of queued jobs covers one that is not published."""
        hint = SchedulerHint(job_id=job_id, state=state, time=utcnow(), replica=self.rt.settings.instance_id)
        try:
            await self.rt.nc.publish(subjects.scheduler_hint(job_id), hint.to_bytes())
        except Exception as exc:
            log.warning("scheduler hint not published", extra={"job_id": job_id, "error": repr(exc)})

    async def _publish(self, a: Applied) -> None:
        job, t = a.job, a.transition
        event = JobStateEvent(job_id=job.id, state=job.state, prev_state=a.prev, time=job.state_since,
                              source="orchestrator", attempt=max(1, job.attempt),
                              node=job.node or a.prev_node or t.node,
                              gpu_uuids=job.gpu_uuids, exit_code=job.exit_code, error=job.error, reason=t.reason,
                              duration_s=a.duration_s)
        try:
            await self.rt.nc.publish(subjects.job_state(job.id), event.to_bytes())
        except Exception as exc:  # the row is the truth; the event is a courtesy to subscribers
            log.warning("job state event not published", extra={"job_id": job.id, "error": repr(exc)})
