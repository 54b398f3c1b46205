"""The jobs component: what the HTTP API calls (submit, read, cancel) and the leader-only machinery it starts
and stops with the scheduler lease (scheduler, reports consumer, reconciliation, housekeeping)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from orchestrator.auth import Principal
from orchestrator.errors import (
    DatabaseUnavailable,
    Forbidden,
    JobNotCancellable,
    JobNotFound,
    NoGpuWorkers,
    ResourceExhausted,
)
from orchestrator.jobs import db, dispatch, live, store
from orchestrator.jobs.accounting import Capacity
from orchestrator.jobs.admission import Admission, Admitted
from orchestrator.jobs.leader import Lease, NotLeader
from orchestrator.jobs.lifecycle import Lifecycle
from orchestrator.jobs.metrics import JobMetrics
from orchestrator.jobs.model import Job, new_job_id, valid_job_id
from orchestrator.jobs.placing import Placement
from orchestrator.jobs.reconcile import Reconciler
from orchestrator.jobs.reports import Reports
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.states import Transition
from orchestrator.runtime import Runtime
from services.bus import ensure_jobs_stream
from services.schemas import FINAL_STATES, JobSpec, JobState
from services.schemas.base import utcnow

log = logging.getLogger("aether.jobs")

DEFAULT_TENANT = "default"
PURGE_EVERY_S = 600.0
STATS_EVERY_S = 10.0
SYNC_EVERY_S = 5.0


class JobService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.s = rt.settings
        self.started_mono = time.monotonic()
        self.metrics = JobMetrics(rt.metrics.registry)
        self.lifecycle = Lifecycle(rt, self.metrics)
        self.admission = Admission(rt)
        self.placement = Placement(rt)
        self.capacity = Capacity(rt.cluster)
        self.lease = Lease(self.s.database_url, check_s=self.s.job_leader_check_s,
                           name=self.s.instance_id or f"pid-{os.getpid()}",
                           on_acquire=self._lead, on_lose=self._follow)
        self.sched = Scheduler(rt, self.lifecycle, self.metrics, self.placement, fence=self.lease.fence)
        self.admission.planner = self.sched  # on the leader, jobs that can start now are placed as they are stored
        self.reports = Reports(rt, self.sched, on_stray=lambda *a: self.reconciler.cancel_stray(*a),
                               on_hint=self._hints, held=self.lease.held_condition)
        self.reconciler = Reconciler(rt, self.sched, caught_up=lambda: self.reports.caught_up_at,
                                     progress=self.reports.progress)

    async def start(self) -> None:
        self.rt.on_node_down.append(self.reconciler.on_node_down)
        self.rt.spawn(self.admission.run(), "job-admission")
        self.rt.spawn(self._run_lease(), "scheduler-lease")
        await live.start(self.rt)

    async def _run_lease(self) -> None:
        # The stream must exist before anyone publishes a job event, or that event is not kept.
        delay = 0.5
        while True:
            try:
                await ensure_jobs_stream(self.rt.js, max_age_s=self.s.job_stream_max_age_s,
                                         replicas=self.s.stream_replicas)
                break
            except Exception as exc:
                log.warning("jobs stream not ensured yet", extra={"error": repr(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self.rt.db_ready.wait()
        await self.lease.run()

    # --- leadership -------------------------------------------------------------------------------------
    async def _lead(self) -> None:
        async with db.connection(self.rt) as conn:
            jobs = await store.active_jobs(conn, ["PENDING", "SCHEDULED", "RUNNING", "LOST"])
        lost = [j for j in jobs if j.state == JobState.LOST]
        scheduled = self.sched.load([j for j in jobs if j.state != JobState.LOST])
        self.reports.caught_up_at = 0.0
        self.reconciler.reset()
        if lost:  # left by a crash between LOST and what follows it (normally one transaction)
            await self.lifecycle.apply([self.lifecycle.after_lost(j) for j in lost], fence=self.lease.fence)
        sp = self.sched.spawn
        sp(self.reports.run(), "job-reports")
        sp(self.sched.run(), "scheduler")
        sp(self.reconciler.run(), "job-reconcile")
        sp(self._housekeeping(), "job-housekeeping")
        for job in scheduled:
            sp(self.sched.dispatch(job), f"redispatch-{job.id}")
        self.metrics.leader.set(1)
        log.info("leading the scheduler", extra={"queued": len(self.sched.queue), "active": len(self.sched.active),
                                                 "redispatched": len(scheduled)})

    async def _follow(self) -> None:
        self.metrics.leader.set(0)
        await self.sched.stop()

    def _hints(self, events: list[tuple[str, JobState]]) -> None:
        """Transitions published by other replicas (new jobs, cancels of queued jobs) reach the leader here."""
        new = [jid for jid, state in events if state == JobState.PENDING and jid not in self.sched.queue
               and jid not in self.sched.active and jid not in self.sched.recently_ended]
        for jid, state in events:
            if state in FINAL_STATES:
                self.sched.queue.remove(jid)
        if new:
            self.sched.spawn(self._load_pending(new), "load-pending")

    async def _load_pending(self, ids: list[str] | None) -> None:
        """Queue PENDING jobs this leader does not know of (`ids`, or any: the periodic safety net)."""
        async with db.connection(self.rt) as conn:
            if ids is None:
                known = await conn.fetch("SELECT id FROM jobs WHERE state = 'PENDING'")
                ids = [r["id"] for r in known if r["id"] not in self.sched.queue]
                if not ids:
                    return
            rows = await conn.fetch("SELECT * FROM jobs WHERE id = ANY($1::text[]) AND state = 'PENDING'", ids)
        jobs = [Job.from_row(r) for r in rows]
        fresh = [j for j in jobs if j.id not in self.sched.queue and j.id not in self.sched.active]
        if fresh:
            self.sched.enqueue(fresh)

    async def _housekeeping(self) -> None:
        last_stats = last_purge = last_sync = 0.0
        while True:
            await asyncio.sleep(1.0)
            self.sched.update_gauges()
            now = time.monotonic()
            try:
                if now - last_stats >= STATS_EVERY_S:
                    last_stats = now
                    async with db.connection(self.rt) as conn:
                        r = await store.outcome_stats(conn, 3600.0)
                    if r["finished"]:
                        self.metrics.success_ratio.set(r["succeeded"] / r["finished"])
                    if r["mean_s"] is not None:
                        self.metrics.mean_duration.set(float(r["mean_s"]))
                if now - last_sync >= SYNC_EVERY_S:
                    last_sync = now
                    await self._load_pending(None)
                if now - last_purge >= PURGE_EVERY_S:
                    last_purge = now
                    async with db.connection(self.rt) as conn:
                        n = await store.purge_finished(conn, self.s.job_retention_h)
                    if n:
                        self.metrics.purged.inc(n)
                        log.info("finished jobs purged", extra={"count": n, "older_than_h": self.s.job_retention_h})
            except (DatabaseUnavailable, NotLeader) as exc:
                log.warning("job housekeeping skipped", extra={"error": exc.message})

    # --- what the API calls -----------------------------------------------------------------------------
    def resolve_tenant(self, spec: JobSpec, principal: Principal) -> str:
        if principal.tenant is None:
            return spec.tenant or DEFAULT_TENANT
        if spec.tenant is not None and spec.tenant != principal.tenant:
            raise Forbidden(f"this token submits for tenant {principal.tenant!r}, not {spec.tenant!r}",
                            field="tenant")
        return principal.tenant

    async def check_capacity(self, spec: JobSpec) -> None:
        workers, fits = self.capacity.check(spec.gpus, spec.gpu_mem_mb)
        if not workers and time.monotonic() - self.started_mono < self.s.heartbeat_timeout_s:
            # Just restarted: heartbeats are still on their way; the database remembers the recent nodes.
            workers, fits = await self._capacity_from_db(spec)
        if not workers:
            raise NoGpuWorkers("No GPU workers available")
        if not fits:
            largest = max((g.mem_total_mb or 0 for g in self.rt.cluster.gpus.values()), default=0)
            per_node: dict[str, int] = {}
            for g in self.rt.cluster.gpus.values():
                per_node[g.node] = per_node.get(g.node, 0) + 1
            raise ResourceExhausted(
                f"no node in the cluster could ever hold this job: it asks for {spec.gpus} GPU(s) with "
                f"{spec.gpu_mem_mb} MB each; the largest GPU has {largest:.0f} MB and the largest node "
                f"{max(per_node.values(), default=0)} GPU(s)",
                details={"gpus": spec.gpus, "gpu_mem_mb": spec.gpu_mem_mb, "largest_gpu_mb": largest})

    async def _capacity_from_db(self, spec: JobSpec) -> tuple[bool, bool]:
        async with db.connection(self.rt, timeout_s=5) as conn:
            rows = await conn.fetch(
                "SELECT g.node, count(*) FILTER (WHERE g.mem_total_mb >= $1) AS fitting FROM gpus g "
                "JOIN nodes n ON n.name = g.node WHERE n.healthy AND g.healthy "
                "AND n.last_heartbeat > now() - make_interval(secs => $2) GROUP BY g.node",
                float(spec.gpu_mem_mb), self.s.heartbeat_timeout_s * 2)
        return bool(rows), any(r["fitting"] >= spec.gpus for r in rows)

    async def submit(self, spec: JobSpec, principal: Principal, idempotency_key: str | None) -> Admitted:
        tenant = self.resolve_tenant(spec, principal)
        await self.check_capacity(spec)
        job = Job.from_spec(new_job_id(), spec, tenant, principal.name, utcnow(), idempotency_key)
        admitted = await self.admission.submit(job)
        if admitted.created and not admitted.announced:
            self.sched.enqueue([admitted.job])
            try:
                # Queued here when this replica leads; otherwise the leader hears of it by a hint. (A leader that
                # lost its lease this instant misses it; the new leader's sync of queued jobs finds it.)
                await self.lifecycle.submitted([admitted.job], queued=not self.sched.leading)
            except Exception:  # stored is stored: the caller must get its job id whatever the courtesies do
                log.exception("announcing a submitted job failed", extra={"job_id": admitted.job.id})
        return admitted

    async def get(self, job_id: str, principal: Principal) -> Job:
        if not valid_job_id(job_id):
            raise JobNotFound(f"no job {job_id!r}", job_id=job_id)
        async with db.connection(self.rt) as conn:
            job = await store.get_job(conn, job_id)
        # Another tenant's job is 'not found', not 'forbidden': its existence is not ours to reveal.
        if job is None or not principal.sees_tenant(job.tenant):
            raise JobNotFound(f"no job {job_id!r}", job_id=job_id)
        return job

    async def cancel(self, job_id: str, principal: Principal) -> Job:
        for _ in range(5):
            job = await self.get(job_id, principal)
            if job.state in FINAL_STATES:
                raise JobNotCancellable(f"job {job_id} already ended ({job.state.value})", job_id=job_id,
                                        details={"state": job.state.value})
            if job.state in (JobState.PENDING, JobState.LOST):
                applied, _ = await self.lifecycle.apply([Transition(
                    job_id, JobState.CANCELLED, only_from=frozenset({JobState.PENDING}),
                    reason=f"cancelled by {principal.name}")])
                if applied:
                    return applied[-1].job
                continue  # it moved on meanwhile (placed, say): look again
            async with db.connection(self.rt) as conn:
                marked = await store.request_cancel(conn, job_id)
            if marked is None:
                continue
            reply, why = await dispatch.send_cancel(self.rt.nc, marked.node, job_id,
                                                    f"cancelled by {principal.name}")
            if reply is None or not reply.ok:
                # The node is silent or does not know it yet: the leader sends the cancel again until it takes,
                # and a node that is gone ends the job CANCELLED.
                log.warning("cancel not acknowledged yet", extra={"job_id": job_id, "node": marked.node,
                                                                  "why": why if reply is None else reply.code})
            return marked
        raise JobNotCancellable(f"job {job_id} keeps changing state; try again", job_id=job_id)

    async def list(self, principal: Principal, *, states: list[str] | None, tenant: str | None,
                   limit: int) -> list[Job]:
        if principal.tenant is not None:
            if tenant is not None and tenant != principal.tenant:
                raise Forbidden(f"this token reads tenant {principal.tenant!r} only", field="tenant")
            tenant = principal.tenant
        async with db.connection(self.rt) as conn:
            return await store.list_jobs(conn, states=states, tenant=tenant, limit=limit)


async def start(rt: Runtime) -> None:
    service = JobService(rt)
    rt.components["jobs"] = service
    await service.start()
