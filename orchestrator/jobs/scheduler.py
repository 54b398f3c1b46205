"""The scheduler (leader only): takes queued jobs in fair order, builds each one's candidate GPUs, asks placement,
promises the memory, commits PENDING -> SCHEDULED, and dispatches to the node's agent by request/reply.

An agent that does not acknowledge in time sends the job back to the queue (SCHEDULED -> PENDING) and its node is
avoided for that job for a while; the agent dedupes on (job id, attempt), and every placement is a new attempt,
so a job is never started twice for one placement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from orchestrator.errors import DatabaseUnavailable
from orchestrator.jobs import dispatch
from orchestrator.jobs.accounting import Accounting, Pool, build_pool, candidates, select
from orchestrator.jobs.leader import NotLeader
from orchestrator.jobs.lifecycle import Lifecycle
from orchestrator.jobs.metrics import JobMetrics
from orchestrator.jobs.model import ON_NODE_STATES, Job
from orchestrator.jobs.placing import Placement, best_fit
from orchestrator.jobs.queue import JobQueue
from orchestrator.jobs.states import Applied, Transition, advance
from orchestrator.runtime import Runtime
from services.schemas import FINAL_STATES, JobFeatures, JobState, PlacementDecision

log = logging.getLogger("aether.jobs.scheduler")

FROM_PENDING = frozenset({JobState.PENDING})
FROM_SCHEDULED = frozenset({JobState.SCHEDULED})
# Fallback reasons (orchestrator/placement.py) that mean the AI core is not answering.
AI_CORE_DOWN = ("UNREACHABLE", "TIMEOUT", "CIRCUIT_OPEN", "AI_CORE_ERROR", "placer error")
SERIAL_FOR_S = 5.0
DEFER_RECHECK_S = 30.0
_RANK = {JobState.PENDING: 0, JobState.SCHEDULED: 1, JobState.RUNNING: 2}
# A pass commits what it has decided at least this often, so slow decisions (AI core) do not delay the first ones.
COMMIT_AFTER_S = 0.05
# Admission batches on the leader reuse the last one's pool for this long, unless something else promised memory
# meanwhile (see `_plan_pool`).
PLAN_POOL_REUSE_S = 0.1


@dataclass
class _Decided:
    transition: Transition  # PENDING -> SCHEDULED, with the assignment
    decision: PlacementDecision


def placement_summary(d: PlacementDecision, offered: int) -> dict:
    """What the job row keeps of the decision (the full one goes to `placements`): best scores first."""
    best = sorted(d.scores.items(), key=lambda kv: kv[1])[:10]
    return {
        "policy": d.policy, "model_version": d.model_version, "fallback_reason": d.fallback_reason,
        "chosen_uuid": d.chosen_uuid, "chosen_uuids": d.chosen_uuids or [d.chosen_uuid],
        "runner_up_uuid": d.runner_up_uuid, "candidates": offered, "scores": dict(best),
        "contributions": [c.model_dump() for c in d.contributions[:8]], "latency_ms": d.latency_ms,
    }


class Scheduler:
    def __init__(self, rt: Runtime, lifecycle: Lifecycle, metrics: JobMetrics, placement: Placement,
                 fence: Callable[[], str]) -> None:
        self.rt = rt
        self.s = rt.settings
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.placement = placement
        self.fence = fence
        self.queue = JobQueue()
        self.acc = Accounting(rt.cluster)
        self.active: dict[str, Job] = {}  # SCHEDULED and RUNNING jobs
        self.assigned_mono: dict[str, float] = {}  # when each active job got its node (reconciliation grace)
        self.avoid: dict[str, dict[str, float]] = {}  # job -> node -> monotonic time until which to avoid it
        # job -> (monotonic time, attempt) it left its node: heartbeats lag behind, listeners may run late
        self.recently_ended: dict[str, tuple[float, int]] = {}
        self.deferred: dict[str, float] = {}  # deferrable job -> monotonic time to ask the carbon component again
        self.wake = asyncio.Event()
        # Held while GPUs are being chosen (a pass, or `plan_new`): each works on its own snapshot of free memory,
        # so two at once could promise the same memory twice. Commits happen outside it: by then the promises are
        # in the accounting, which every later snapshot starts from.
        self._deciding = asyncio.Lock()
        self._plan_pool: tuple[Pool, int, float] | None = None  # (pool, reservations it has seen, built at)
        self.leading = False
        self.tasks: set[asyncio.Task] = set()
        self._sample_wake = 0.0
        self._serial_until = 0.0
        lifecycle.listeners.append(self.on_applied)
        rt.components.setdefault("sample_listeners", []).append(self.on_samples)

    # --- leadership -------------------------------------------------------------------------------------
    def load(self, jobs: list[Job]) -> list[Job]:
        """Take over: rebuild the queue and the memory promises from the database; returns SCHEDULED jobs,
        which the new leader dispatches again (same attempt: an agent that has it answers ok, runs nothing)."""
        self.reset()
        self.leading = True
        now = time.monotonic()
        scheduled = []
        for job in jobs:
            if job.state == JobState.PENDING:
                self.queue.add(job)
            elif job.state in ON_NODE_STATES:
                self.active[job.id] = job
                self.assigned_mono[job.id] = now
                self.acc.reserve(job.id, job.tenant, job.gpu_uuids, job.gpu_mem_mb, job.job_type, job.model,
                                 running=job.state == JobState.RUNNING)
                if job.state == JobState.SCHEDULED:
                    scheduled.append(job)
        self.wake.set()
        self.update_gauges()
        return scheduled

    async def stop(self, limit_s: float = 5.0) -> None:
        """Stop leading: cancel the leader's tasks and wait for them (a pull subscription must be unsubscribed
        before NATS drains at shutdown, or the drain waits on it), then forget the in-memory state."""
        self.leading = False
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=limit_s)
        self.reset()

    def reset(self) -> None:
        self.leading = False
        for t in list(self.tasks):
            t.cancel()
        self.queue.clear()
        self.acc.clear()
        self.active.clear()
        self.assigned_mono.clear()
        self.avoid.clear()
        self.recently_ended.clear()
        self.deferred.clear()

    def spawn(self, coro: Awaitable, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("scheduler task died", extra={"task": name}, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # --- what the lifecycle tells us --------------------------------------------------------------------
    def on_applied(self, applied: list[Applied]) -> None:
        if not self.leading:
            return
        for a in applied:
            job = a.job
            ended = self.recently_ended.get(job.id)
            if ended is not None and ended[1] >= job.attempt and job.state in ON_NODE_STATES:
                continue  # news of an attempt that has already ended (listeners can run out of commit order)
            cur = self.active.get(job.id)
            if cur is not None and job.state in ON_NODE_STATES and (cur.attempt, _RANK[cur.state]) > \
                    (job.attempt, _RANK[job.state]):
                continue
            if job.state == JobState.PENDING:
                self.active.pop(job.id, None)
                self.acc.release(job.id)
                self.queue.add(job)
                self.wake.set()
            elif job.state == JobState.SCHEDULED:
                self.queue.remove(job.id)
                self.deferred.pop(job.id, None)
                self.active[job.id] = job
                self.assigned_mono[job.id] = time.monotonic()
                if job.id not in self.acc.by_job:
                    self.acc.reserve(job.id, job.tenant, job.gpu_uuids, job.gpu_mem_mb, job.job_type, job.model)
            elif job.state == JobState.RUNNING:
                self.queue.remove(job.id)
                self.active[job.id] = job
                self.assigned_mono.setdefault(job.id, time.monotonic())
                if job.id not in self.acc.by_job:
                    self.acc.reserve(job.id, job.tenant, job.gpu_uuids, job.gpu_mem_mb, job.job_type, job.model)
                self.acc.mark_running(job.id)
            elif job.state in FINAL_STATES or job.state == JobState.LOST:
                self.queue.remove(job.id)
                if self.active.pop(job.id, None) is not None:
                    self._ended(job.id, job.attempt)
                self.assigned_mono.pop(job.id, None)
                self.avoid.pop(job.id, None)
                self.deferred.pop(job.id, None)
                if job.id in self.acc.by_job:
                    self.acc.release(job.id)
                    self.wake.set()  # memory came free: waiting jobs may fit now

    def _ended(self, job_id: str, attempt: int) -> None:
        now = time.monotonic()
        self.recently_ended[job_id] = (now, attempt)
        if len(self.recently_ended) > 50000:  # bounded: forget the oldest half
            cut = sorted(t for t, _ in self.recently_ended.values())[len(self.recently_ended) // 2]
            self.recently_ended = {j: v for j, v in self.recently_ended.items() if v[0] > cut}

    def on_samples(self, batches: list) -> None:
        """New telemetry may show memory freed by jobs that ended: look at waiting jobs again (at most 5/s)."""
        if self.leading and self.queue:
            now = time.monotonic()
            if now - self._sample_wake >= 0.2:
                self._sample_wake = now
                self.wake.set()

    def enqueue(self, jobs: list[Job]) -> None:
        if not self.leading:
            return
        for job in jobs:
            if job.state == JobState.PENDING and job.id not in self.active:
                self.queue.add(job)
        self.wake.set()

    def update_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set(len(self.queue))
        m.active.labels("PENDING").set(len(self.queue))
        running = sum(1 for j in self.active.values() if j.state == JobState.RUNNING)
        m.active.labels("RUNNING").set(running)
        m.active.labels("SCHEDULED").set(len(self.active) - running)

    # --- the loop ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                # Waiting jobs are looked at again at least every second: telemetry changes free memory too.
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                placed = await self.pass_once()
                delay = 0.2
            except (DatabaseUnavailable, NotLeader) as exc:
                log.warning("scheduling paused", extra={"error": exc.message, "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.wake.set()
                continue
            self.update_gauges()
            if placed >= self.s.job_scheduler_batch:
                self.wake.set()  # more may be waiting: go again without the timeout

    async def pass_once(self) -> int:
        """One pass over the queue; returns how many jobs were placed.

        Decisions are taken a chunk at a time (the placement service is asked for a chunk concurrently, and each
        chunk sees the memory the previous ones took), but committed together: one transaction (and one fsync)
        for up to `job_scheduler_batch` jobs, or for what was decided in COMMIT_AFTER_S, whichever comes first.
        Per-chunk commits made a burst wait on one round of database round trips per 32 jobs."""
        if not self.queue or not self.rt.nc.is_connected:
            return 0  # without NATS a dispatch could not be acknowledged: placing now would only bounce jobs
        decided: list[_Decided] = []  # reserved in memory, not committed yet
        placed = 0
        async with self._deciding:
            pool = build_pool(self.acc)
            if not pool.gpus:
                return 0
            usage = dict(self.acc.tenant_gpus)
            now = first = time.monotonic()
            try:
                async with aclosing(self._decide_in_order(self.queue.ordered(usage), pool, usage, now)) as chunks:
                    async for chunk in chunks:
                        decided += chunk
                        if placed + len(decided) >= self.s.job_scheduler_batch:
                            break
                        if decided and time.monotonic() - first >= COMMIT_AFTER_S:
                            # Deciding is slow (the AI core answers): do not hold the first decisions back longer.
                            batch, decided = decided, []
                            placed += await self._commit(batch)
                            first = time.monotonic()
            except BaseException:
                self.release(decided)
                raise
        if decided:
            placed += await self._commit(decided)
        return placed

    async def _decide_in_order(self, jobs: Iterable[Job], pool: Pool, usage: dict[str, float], now: float
                               ) -> AsyncIterator[list[_Decided]]:
        """The decisions for `jobs`, in their order, a chunk of `job_placement_concurrency` at a time (each chunk
        sees the memory the previous ones took); jobs that cannot start now are skipped."""
        chunk: list[tuple[Job, np.ndarray]] = []
        for job in jobs:
            pos = await self._positions(job, pool, now)
            if pos is None:
                continue
            chunk.append((job, pos))
            if len(chunk) >= self.s.job_placement_concurrency:
                decided = await self._decide_chunk(chunk, pool, usage)
                chunk = []
                yield decided
        if chunk:
            yield await self._decide_chunk(chunk, pool, usage)

    async def _positions(self, job: Job, pool: Pool, now: float) -> np.ndarray | None:
        """The job's candidate GPUs in `pool`, or None if it cannot start now (it waits; smaller jobs behind it
        may go)."""
        if job.gpu_mem_mb > pool.max_free:
            return None
        if job.deferrable and not await self._may_start(job, now):
            return None  # waiting for a cleaner window (carbon-aware deferral)
        pos = select(pool, job.gpu_mem_mb, job.gpus, self.s.job_placement_max_candidates,
                     self._avoided(job.id, now), self._resident(job.model))
        return pos if len(pos) >= job.gpus else None

    def release(self, decided: list[_Decided]) -> None:
        """Give back the memory promised to decisions that were not committed."""
        for d in decided:
            self.acc.release(d.transition.job_id)
        if decided:
            self.wake.set()

    # --- placing at admission -------------------------------------------------------------------------------
    async def plan_new(self, jobs: list[Job]) -> dict[str, _Decided]:
        """On the leader with no job waiting: where each of a batch of new jobs can start right now, decided as a
        pass would (in queue order, with the same candidates and placement) and promised in memory.

        Admission writes these placements in the transaction that stores the jobs, then calls `placed_new` (or
        `release` if it could not commit): a submission then costs one commit and no scheduler pass before its
        dispatch. A job that cannot start now is left out and queues as usual; with jobs waiting nothing is
        planned, so a new job never overtakes a queued one."""
        if not self.leading or self.queue or not self.rt.nc.is_connected:
            return {}
        decided: list[_Decided] = []
        async with self._deciding:
            if not self.leading or self.queue:
                return {}
            pool, built = self._pool_for_plan()
            if not pool.gpus:
                return {}
            usage = dict(self.acc.tenant_gpus)
            now = time.monotonic()
            batch = JobQueue()
            for job in jobs:
                batch.add(job)
            try:
                async for chunk in self._decide_in_order(batch.ordered(usage), pool, usage, now):
                    decided += chunk
            except BaseException:
                self._plan_pool = None
                self.release(decided)
                raise
            self._plan_pool = (pool, self.acc.reservations, built)
        return {d.transition.job_id: d for d in decided}

    def _pool_for_plan(self) -> tuple[Pool, float]:
        """The pool for an admission batch, and when it was built: the previous batch's, with what that batch took
        already taken from it, while it is younger than PLAN_POOL_REUSE_S and nobody else promised memory since
        (a pass, a placement seen from elsewhere). Building one walks every GPU, and a burst admits a batch every
        few milliseconds. What it does not show yet - memory given back, a newer sample - only makes it cautious
        for that long, like any pass's snapshot."""
        now = time.monotonic()
        cached = self._plan_pool
        if cached is not None and cached[1] == self.acc.reservations and now - cached[2] < PLAN_POOL_REUSE_S:
            return cached[0], cached[2]
        return build_pool(self.acc), now

    @staticmethod
    def advance_new(jobs: list[Job], plan: dict[str, _Decided]) -> list[Applied]:
        """For admission, about to store `jobs`: the planned PENDING -> SCHEDULED of those planned."""
        return [advance(job, plan[job.id].transition) for job in jobs if job.id in plan]

    def rows_new(self, applied: list[Applied], plan: dict[str, _Decided]) -> tuple[Callable[[int], str], list] | None:
        """For admission's insert of the jobs: the placement rows of those placed (`store.insert_jobs`'s `also`)."""
        return self.placement.rows([plan[a.job.id].decision for a in applied])

    async def placed_new(self, jobs: list[Job], applied: list[Applied], plan: dict[str, _Decided]) -> None:
        """After admission committed `jobs` (PENDING) and, of them, `applied` (-> SCHEDULED): announce both steps
        in order, then dispatch (see `_dispatch_placed`)."""
        await self.lifecycle.submitted(jobs, queued=False)
        await self.lifecycle.announce(applied)
        await self._dispatch_placed(applied, {a.job.id: plan[a.job.id].decision for a in applied})

    async def _may_start(self, job: Job, now: float) -> bool:
        """A deferrable job asks the carbon component, at most every DEFER_RECHECK_S (its answer is a forecast,
        not a per-millisecond fact); without that component it starts like any job."""
        if now < self.deferred.get(job.id, 0.0):
            return False
        carbon = self.rt.components.get("carbon")
        if carbon is None or not hasattr(carbon, "decision"):
            return True
        try:
            d = await carbon.decision(job)
        except Exception:
            log.exception("carbon deferral decision failed; starting the job", extra={"job_id": job.id})
            return True
        if d.start:
            self.deferred.pop(job.id, None)
            return True
        self.deferred[job.id] = now + DEFER_RECHECK_S
        log.info("job deferred for a cleaner window", extra={"job_id": job.id, "reason": getattr(d, "reason", None),
                                                              "wait_until": getattr(d, "wait_until", None)})
        return False

    def _avoided(self, job_id: str, now: float) -> set[str] | None:
        nodes = self.avoid.get(job_id)
        if not nodes:
            return None
        live = {n for n, until in nodes.items() if until > now}
        if not live:
            del self.avoid[job_id]
        return live or None

    def _resident(self, model: str | None) -> set[str] | None:
        if model is None:
            return None
        return {u for u, holds in self.acc.by_gpu.items() if any(h.model == model for h in holds.values())}

    async def _decide(self, job: Job, pool: Pool, pos: np.ndarray) -> tuple[PlacementDecision, float]:
        t0 = time.perf_counter()
        cands = candidates(pool, pos, self.acc, job.model)
        spec = job.spec
        features = JobFeatures(gpus=job.gpus, gpu_mem_mb=job.gpu_mem_mb, job_type=job.job_type, model=job.model,
                               expected_util_pct=spec.expected_util_pct, max_duration_s=job.max_duration_s,
                               priority=job.priority)
        decision = await self.placement.place(job.id, features, cands)
        if not self._valid(decision, job, pool):
            decision = best_fit(job.id, features, cands, f"{decision.policy} chose GPUs that cannot take the job")
        return decision, time.perf_counter() - t0

    def _valid(self, d: PlacementDecision, job: Job, pool: Pool) -> bool:
        uuids = d.chosen_uuids or [d.chosen_uuid]
        nodes = {pool.gpus[pool.pos[u]].node for u in uuids if u in pool.pos}
        return len(set(uuids)) == job.gpus and len(nodes) == 1 and all(u in pool.pos for u in uuids)

    def _choose(self, d: PlacementDecision, job: Job, pool: Pool) -> list[str] | None:
        """The decided GPUs if they still fit (an earlier job of the same chunk may have taken them), else the
        next best by the decision's own scores on one node; None if nothing fits any more."""
        uuids = d.chosen_uuids or [d.chosen_uuid]
        if all(pool.fits(u, job.gpu_mem_mb) for u in uuids):
            return uuids
        ranked = sorted((s, u) for u, s in d.scores.items() if pool.fits(u, job.gpu_mem_mb))
        by_node: dict[str, list[str]] = {}
        for _, u in ranked:
            node = pool.gpus[pool.pos[u]].node
            by_node.setdefault(node, []).append(u)
            if len(by_node[node]) == job.gpus:
                return by_node[node]
        return None

    async def _decide_chunk(self, chunk: list[tuple[Job, np.ndarray]], pool: Pool, usage: dict[str, float]
                            ) -> list[_Decided]:
        """Decide where each job of the chunk goes and reserve its memory (in `pool` and the accounting); the
        caller commits, or releases the reservations if it cannot."""
        if time.monotonic() < self._serial_until:
            # The AI core is failing: asking for a whole chunk at once would send every request of the chunk
            # into the same connection errors or timeouts. One at a time, the placer's breaker stops them.
            results = [await self._decide(job, pool, pos) for job, pos in chunk]
        else:
            results = await asyncio.gather(*(self._decide(job, pool, pos) for job, pos in chunk))
        if any(d.policy == "heuristic" and (d.fallback_reason or "").startswith(AI_CORE_DOWN) for d, _ in results):
            self._serial_until = time.monotonic() + SERIAL_FOR_S
        out: list[_Decided] = []
        for (job, pos), (decision, took) in zip(chunk, results, strict=True):
            self.metrics.placement_latency.observe(took)
            uuids = self._choose(decision, job, pool)
            if uuids is None:
                continue  # stays queued for the next pass
            for u in uuids:
                pool.take(u, job.gpu_mem_mb)
            self.acc.reserve(job.id, job.tenant, uuids, job.gpu_mem_mb, job.job_type, job.model)
            usage[job.tenant] = usage.get(job.tenant, 0.0) + len(uuids)
            gpus = [pool.gpus[pool.pos[u]] for u in uuids]
            out.append(_Decided(Transition(
                job.id, JobState.SCHEDULED, only_from=FROM_PENDING, assign_node=gpus[0].node,
                assignment=[{"uuid": g.uuid, "index": g.index} for g in gpus],
                placement=placement_summary(decision, len(pos)),
                reason=f"placed on {gpus[0].node} by {decision.policy}"), decision))
        return out

    async def _commit(self, decided: list[_Decided]) -> int:
        """PENDING -> SCHEDULED for every decided job, with their placement rows, in one fenced transaction; then
        dispatch them all (concurrently: each is its own task)."""
        decisions = {d.transition.job_id: d.decision for d in decided}

        async def record(conn, applied) -> None:
            await self.placement.record(conn, [decisions[a.job.id] for a in applied
                                               if a.job.state == JobState.SCHEDULED])

        try:
            applied, refused = await self.lifecycle.apply([d.transition for d in decided], fence=self.fence,
                                                          extra=record)
        except BaseException:
            self.release(decided)
            raise
        for t, why in refused:
            # No longer PENDING in the database (cancelled from another replica, say): drop our copy.
            self.acc.release(t.job_id)
            self.queue.remove(t.job_id)
            log.info("placement not committed", extra={"job_id": t.job_id, "why": why.reason})
        await self._dispatch_placed(applied, decisions)
        return len(applied)

    async def _dispatch_placed(self, applied: list[Applied], decisions: dict[str, PlacementDecision]) -> None:
        """Committed placements: count them, dispatch each (its own task), publish the decisions."""
        placed = []
        for a in applied:
            if a.job.state == JobState.SCHEDULED:
                d = decisions[a.job.id]
                placed.append(d)
                self.metrics.placements.labels(d.policy).inc()
                self.spawn(self.dispatch(a.job), f"dispatch-{a.job.id}")
        await self.placement.publish(placed)

    # --- dispatch ---------------------------------------------------------------------------------------
    async def dispatch(self, job: Job) -> None:
        t0 = time.perf_counter()
        reply, why = await dispatch.send_run(self.rt.nc, job, self.s.job_dispatch_timeout_s)
        if reply is not None and reply.ok:
            self.metrics.dispatch_latency.observe(time.perf_counter() - t0)
            return
        reason = f"{reply.code}: {reply.message}" if reply is not None else why
        self.metrics.dispatch_failures.labels(why if reply is None else "refused").inc()
        log.warning("dispatch not acknowledged; back to the queue",
                    extra={"job_id": job.id, "node": job.node, "attempt": job.attempt, "why": reason})
        if self.s.job_dispatch_exclude_s > 0 and self.rt.nc.is_connected and not why.startswith("error:"):
            # The node failed to answer (our own connection did not fail): try other nodes for a while.
            self.avoid.setdefault(job.id, {})[job.node] = time.monotonic() + self.s.job_dispatch_exclude_s
        if reply is None:
            # It may still arrive late: tell the node to drop it (the agent also reports it, and a report from a
            # node the job is not assigned to gets it cancelled).
            self.spawn(dispatch.send_cancel(self.rt.nc, job.node, job.id, "dispatch timed out; placed elsewhere"),
                       f"cancel-{job.id}")
        back = Transition(job.id, JobState.PENDING, only_from=FROM_SCHEDULED, only_attempt=job.attempt,
                          reason=f"dispatch to {job.node} not acknowledged ({reason})")
        delay = 0.5
        while self.leading:
            try:
                await self.lifecycle.apply([back], fence=self.fence)
                return
            except (DatabaseUnavailable, NotLeader):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
