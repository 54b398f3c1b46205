"""Keeping the orchestrator's jobs and the agents' reality in step (leader only).

- A node that stops heartbeating: its SCHEDULED/RUNNING jobs become LOST (then re-queued up to the retry limit,
  or FAILED), or CANCELLED when a cancel was already asked for.
- Every heartbeat lists the jobs its agent runs. A job we place on a node but absent from its heartbeats for
  `job_reconcile_grace_s` is LOST (the agent restarted and forgot it, say); a job an agent runs that is not
  assigned to it is cancelled there.
- Cancels asked for but not yet effective are sent again.
Before declaring a job LOST, the reports consumer must have caught up past the evidence (a final report may be
waiting in the stream), so a job that finished is never re-run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from orchestrator.errors import DatabaseUnavailable
from orchestrator.jobs import db, dispatch
from orchestrator.jobs.leader import NotLeader
from orchestrator.jobs.model import ON_NODE_STATES
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.states import Transition
from orchestrator.runtime import Runtime
from services.schemas import JobState

log = logging.getLogger("aether.jobs.reconcile")

STRAY_CANCEL_EVERY_S = 15.0
CANCEL_RESEND_AFTER_S = 3.0


class Reconciler:
    def __init__(self, rt: Runtime, sched: Scheduler, caught_up: Callable[[], float],
                 progress: asyncio.Event) -> None:
        self.rt = rt
        self.progress = progress  # set by the reports consumer whenever it catches up
        self.s = rt.settings
        self.sched = sched
        self.caught_up = caught_up  # monotonic time as of which every job report has been applied
        self.missing: dict[str, float] = {}  # job -> monotonic time it was first missed in a heartbeat
        self.seen_hb: dict[str, object] = {}  # node -> heartbeat object last looked at
        self.stray_sent: dict[tuple[str, str], float] = {}
        self.leader_since = 0.0

    def reset(self) -> None:
        self.missing.clear()
        self.seen_hb.clear()
        self.stray_sent.clear()
        self.leader_since = time.monotonic()

    # --- node loss --------------------------------------------------------------------------------------
    async def on_node_down(self, node: str) -> None:
        if not self.sched.leading:
            return
        since = time.monotonic()
        jobs = [j for j in self.sched.active.values() if j.node == node]
        if not jobs:
            return
        await self._caught_up_past(since)
        await self._lose([j.id for j in self.sched.active.values() if j.node == node],
                         f"node {node} stopped heartbeating for more than {self.s.heartbeat_timeout_s:g} s")

    async def _caught_up_past(self, t: float, limit_s: float = 10.0) -> None:
        """Wait (bounded) until every report published before `t` has been applied."""
        deadline = time.monotonic() + limit_s
        while self.caught_up() < t:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("job reports lag behind; deciding on what is known", extra={"waited_s": limit_s})
                return
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), timeout=left)
            except TimeoutError:
                pass

    async def _lose(self, job_ids: list[str], reason: str) -> None:
        transitions = []
        for jid in job_ids:
            job = self.sched.active.get(jid)
            if job is None:
                continue
            # (A job whose cancel was asked for ends CANCELLED instead: the lifecycle decides on the locked row.)
            transitions.append(Transition(jid, JobState.LOST, only_from=ON_NODE_STATES, only_attempt=job.attempt,
                                          reason=reason, error=reason))
        if not transitions:
            return
        applied, _ = await self.sched.lifecycle.apply(transitions, fence=self.sched.fence)
        for a in applied:
            if a.job.state in (JobState.LOST, JobState.CANCELLED):
                self.missing.pop(a.job.id, None)
                log.warning("job lost its node", extra={"job_id": a.job.id, "node": a.job.node,
                                                        "to": a.job.state.value, "reason": reason})

    # --- the periodic pass ------------------------------------------------------------------------------
    async def run(self) -> None:
        self.reset()
        last_sweep = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.reconcile_heartbeats()
                await self.orphaned_nodes()
                if time.monotonic() - last_sweep >= 2.0:
                    last_sweep = time.monotonic()
                    await self.resend_cancels()
            except (DatabaseUnavailable, NotLeader) as exc:
                log.warning("reconciliation paused", extra={"error": exc.message})

    async def reconcile_heartbeats(self) -> None:
        grace = self.s.job_reconcile_grace_s
        lose: list[str] = []
        for name, node in list(self.rt.cluster.nodes.items()):
            hb = node.heartbeat
            if hb is None or not node.healthy or self.seen_hb.get(name) is hb:
                continue
            self.seen_hb[name] = hb
            hb_at = node.last_heartbeat_mono
            listed = set(hb.running_jobs)
            mine = [j for j in self.sched.active.values() if j.node == name]
            for job in mine:
                if job.id in listed:
                    self.missing.pop(job.id, None)
                    continue
                if hb_at - self.sched.assigned_mono.get(job.id, hb_at) < grace:
                    continue  # placed too recently to be in a heartbeat for sure
                first = self.missing.setdefault(job.id, hb_at)
                # Still missing a grace period later, and every report sent before it first went missing (its
                # final state, say, on its way through the stream) has been applied: it is lost.
                if hb_at - first >= grace and self.caught_up() > first:
                    lose.append(job.id)
            mine_ids = {j.id for j in mine}
            for jid in listed - mine_ids:
                ended = self.sched.recently_ended.get(jid)
                if ended is not None and hb_at - ended[0] < grace:
                    continue  # it ended here a moment ago: the heartbeat was older than its final report
                await self._cancel_stray(name, jid, "not assigned to this node (reconciled against heartbeats)")
        if lose:
            log.warning("jobs missing from their node's heartbeats", extra={"jobs": lose[:20], "count": len(lose)})
            await self._lose(lose, f"its node's agent no longer runs it (absent from heartbeats for {grace:g} s)")

    async def orphaned_nodes(self) -> None:
        """Jobs on nodes this replica never heard from (it became leader after they went silent)."""
        if time.monotonic() - self.leader_since < self.s.heartbeat_timeout_s:
            return
        down = {j.node for j in self.sched.active.values()
                if j.node is not None and not self.rt.cluster.node_healthy(j.node)}
        for node in down:
            await self.on_node_down(node)

    async def _cancel_stray(self, node: str, job_id: str, reason: str) -> None:
        key = (node, job_id)
        now = time.monotonic()
        if now - self.stray_sent.get(key, 0.0) < STRAY_CANCEL_EVERY_S:
            return
        self.stray_sent[key] = now
        if len(self.stray_sent) > 10000:
            self.stray_sent = {k: v for k, v in self.stray_sent.items() if now - v < STRAY_CANCEL_EVERY_S}
        self.sched.metrics.strays_cancelled.inc()
        log.warning("cancelling a job on a node it is not assigned to", extra={"node": node, "job_id": job_id,
                                                                               "reason": reason})
        self.sched.spawn(dispatch.send_cancel(self.rt.nc, node, job_id, reason), f"stray-{job_id}")

    def cancel_stray(self, node: str, job_id: str, reason: str) -> None:
        self.sched.spawn(self._cancel_stray(node, job_id, reason), f"stray-{job_id}")

    async def resend_cancels(self) -> None:
        """Cancels asked for (on any replica) whose job still runs on a live node: send them again."""
        async with db.connection(self.rt) as conn:
            rows = await conn.fetch(
                "SELECT id, node, cancel_requested_at < now() - make_interval(secs => $1) AS old "
                "FROM jobs WHERE state IN ('SCHEDULED', 'RUNNING') AND cancel_requested_at IS NOT NULL",
                CANCEL_RESEND_AFTER_S)
        for r in rows:
            if r["old"] and r["node"] and self.rt.cluster.node_healthy(r["node"]):
                self.sched.spawn(dispatch.send_cancel(self.rt.nc, r["node"], r["id"], "cancel requested"),
                                 f"recancel-{r['id']}")
