"""Agents' job reports (leader only): a durable JetStream consumer of `aether.jobs.*.state.<node>` and
`aether.jobs.*.log.<node>`, plus the replicas' `aether.scheduler.hint.*` (jobs stored queued, queued jobs cancelled).

Each batch is applied in ONE transaction — state reports through the state machine, log lines stored —
and acked only after the commit, so nothing is lost across a crash and a redelivery changes nothing (a state the
job already has is a duplicate; a log line is keyed by job, attempt and seq). A report from a node the job is not
assigned to is refused, and if it says the job runs there, that node is told to cancel it. The node is the one in
the subject, which only that node's NATS account may publish on: a report whose body names another node or
another job is malformed (dead-lettered and counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

import asyncpg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from orchestrator.errors import DatabaseUnavailable
from orchestrator.jobs.leader import NotLeader
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.states import Transition
from orchestrator.pullfeed import PullFeed
from orchestrator.runtime import Runtime
from services import subjects
from services.bus import JOBS_STREAM, JOBS_STREAM_SUBJECTS, dead_letter, decode, ensure_jobs_stream
from services.errors import MalformedMessage
from services.schemas import FINAL_STATES, JobLogLine, JobState, JobStateEvent, SchedulerHint

log = logging.getLogger("aether.jobs.reports")
_NUL = b"\\u0000"  # NUL, as JSON escapes it
_HINT_PREFIX = subjects.SCHEDULER_HINT_ALL[:-1]

# Whether every report so far is applied is asked at most every CAUGHT_UP_EVERY_S, and at least every IDLE_POLL_S.
IDLE_POLL_S = 0.5
CAUGHT_UP_EVERY_S = 0.1
BATCHES_IN_FLIGHT = 3
# A leader that dies holding a fetched batch delays those reports (and the reconciler's verdicts) this long.
REPORTS_ACK_WAIT_S = 10.0
# The pull requests kept in flight: each lasts this long, and says it is alive this often while idle.
PULL_EXPIRES_S = 30.0
PULL_HEARTBEAT_S = 2.5


class Reports:
    def __init__(self, rt: Runtime, sched: Scheduler, on_stray: Callable[[str, str, str], None],
                 on_hint: Callable[[list[tuple[str, JobState]]], None], held: Callable[[], str]) -> None:
        self.rt = rt
        self.held = held  # the lease as an SQL condition, for the one-statement writes (Lifecycle.apply_known)
        self._writing: dict[str, asyncio.Event] = {}  # job -> set once the batch writing its reports is done
        self.s = rt.settings
        self.sched = sched
        self.on_stray = on_stray
        self.on_hint = on_hint
        self.caught_up_at = 0.0  # monotonic: every report published before this has been applied
        self.progress = asyncio.Event()
        self._applied = asyncio.Event()  # a batch was applied since the last caught-up check
        self.checks = 0  # caught-up checks answered

    async def _ensure_consumer(self) -> None:
        cfg = ConsumerConfig(durable_name=self.s.job_reports_consumer, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.ALL, ack_wait=REPORTS_ACK_WAIT_S, max_deliver=-1,
                             max_ack_pending=self._credit(),
                             filter_subjects=JOBS_STREAM_SUBJECTS)
        try:
            await self.rt.js.add_consumer(JOBS_STREAM, cfg)
        except BadRequestError as exc:
            # It exists with settings that cannot be changed in place: keep it and its acknowledgements. (An older
            # version's, filtering on other subjects, is updated in place.)
            log.warning("job reports consumer kept with its existing settings", extra={"error": repr(exc)})

    def _credit(self) -> int:
        return max(1000, self.s.job_reports_batch * 4)

    async def run(self) -> None:
        await ensure_jobs_stream(self.rt.js, max_age_s=self.s.job_stream_max_age_s, replicas=self.s.stream_replicas)
        await self._ensure_consumer()
        batch = self.s.job_reports_batch
        # Pull requests kept in flight: a report is delivered as soon as it is stored, where a fetch per batch
        # left it in the stream until the previous batch was under way (measured: ~27 ms of a report's ~35 ms
        # way to its commit at 500 jobs/s).
        feed = PullFeed(self.rt.nc, JOBS_STREAM, self.s.job_reports_consumer, batch=batch, credit=self._credit(),
                        expires_s=PULL_EXPIRES_S, heartbeat_s=PULL_HEARTBEAT_S, keepalive_s=REPORTS_ACK_WAIT_S / 3,
                        ensure=self._ensure_consumer)
        await feed.start()
        log.info("job reports consumer started", extra={"consumer": self.s.job_reports_consumer})
        tracker = asyncio.create_task(self._track_caught_up(), name="job-reports-caught-up")
        slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        applying: asyncio.Task | None = None  # the latest batch being applied
        try:
            while True:
                # A batch starts as soon as the previous one holds its jobs (in `_writing`): a job in both then
                # waits for it, so reports of one job still apply in order; what arrives meanwhile is the next batch. At most BATCHES_IN_FLIGHT at once (each holds a connection).
                # Each batch is acked after its own commit.
                msgs = await feed.take(batch)
                await slots.acquire()
                locked = asyncio.Event()
                applying = asyncio.create_task(self._apply(feed, msgs, locked, applying))
                applying.add_done_callback(lambda _: slots.release())
                until_locked = asyncio.create_task(locked.wait())
                await asyncio.wait({applying, until_locked}, return_when=asyncio.FIRST_COMPLETED)
                until_locked.cancel()
                if applying.done():
                    applying.result()  # (raises what it raised)
        finally:
            tracker.cancel()
            if applying is not None:
                applying.cancel()
                await asyncio.wait({applying})
            await asyncio.wait({tracker})
            await feed.stop()  # what is held unacked goes back (nak) to whoever leads next

    async def _apply(self, feed: PullFeed, msgs: list, locked: asyncio.Event, before: asyncio.Task | None) -> None:
        try:
            await self.handle_until_done(msgs, locked)
        finally:
            locked.set()
            feed.release(msgs)
        if before is not None:
            await before  # (earlier batches finish first)
        self._applied.set()

    async def _track_caught_up(self) -> None:
        """Every report published before `caught_up_at` has been applied: the reconciler's condition for calling a
        job LOST. Reports held unacknowledged by another client (a leader that died or stepped down holding a
        batch, which the server redelivers only after `ack_wait`) keep it back, or the reconciler could call a job
        that finished LOST and run it again.

        The server's word: a consumer info asked at T with nothing left undelivered says every report stored
        before T is among those delivered (up to stream sequence D); once the ack floor reaches D, all of them are
        applied, and we are caught up as of T."""
        waiting: deque[tuple[float, int]] = deque(maxlen=64)  # (T, D), oldest first
        while True:
            self._applied.clear()
            asked = time.monotonic()
            try:
                info = await self.rt.js.consumer_info(JOBS_STREAM, self.s.job_reports_consumer)
            except Exception as exc:  # NATS reconnecting: claim nothing
                log.warning("job reports consumer info failed", extra={"error": repr(exc)})
                info = None
            if info is not None:
                self.checks += 1
                delivered = (info.delivered.stream_seq if info.delivered is not None else None) or 0
                floor = (info.ack_floor.stream_seq if info.ack_floor is not None else None) or 0
                if not info.num_pending:
                    waiting.append((asked, delivered))
                caught_up = None
                while waiting and waiting[0][1] <= floor:
                    caught_up = waiting.popleft()[0]
                if caught_up is not None:
                    self.caught_up_at = caught_up
                    self.progress.set()
            # Asked again a moment after the next batch is applied (the reconciler reads the claim once a second),
            # or every IDLE_POLL_S when nothing happens.
            await asyncio.sleep(CAUGHT_UP_EVERY_S)
            try:
                await asyncio.wait_for(self._applied.wait(), IDLE_POLL_S)
            except TimeoutError:
                pass

    async def handle_until_done(self, msgs, locked: asyncio.Event | None = None) -> None:
        delay = 0.2
        while True:
            try:
                await self.handle(msgs, locked)
                return
            except (DatabaseUnavailable, asyncpg.TransactionRollbackError) as exc:
                # (A deadlock or serialization failure rolled the batch back: it applies on a retry.)
                log.warning("job reports not applied, retrying", extra={"error": getattr(exc, "message", repr(exc)),
                                                                          "retry_in_s": delay})
                for msg in msgs:
                    try:
                        await msg.in_progress()
                    except Exception:
                        pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except NotLeader:
                # Handed back at once (not left to ack_wait): whoever leads now gets them. This task is about to
                # be stopped.
                for msg in msgs:
                    try:
                        await msg.nak()
                    except Exception:
                        pass
                return

    async def handle(self, msgs, locked: asyncio.Event | None = None) -> None:
        m = self.sched.metrics
        # Batches overlap, but a job's reports apply in order: first wait for earlier batches still writing this
        # batch's jobs (rare: a job's next report usually comes after its last one is written), so that what follows
        # reads the copies they leave.
        earlier = set()
        for msg in msgs:
            parts = subjects.job_subject_parts(msg.subject)
            if parts is not None and parts[0] in self._writing:
                earlier.add(self._writing[parts[0]])
        if earlier:
            await asyncio.gather(*(e.wait() for e in earlier))
        transitions: list[Transition] = []
        running: set[str] = set()  # jobs whose RUNNING this batch already applies
        log_rows: list[tuple] = []
        hints: list[tuple[str, JobState]] = []
        for msg in msgs:
            try:
                if msg.subject.startswith(_HINT_PREFIX):
                    hint = decode(SchedulerHint, msg.data, msg.subject)
                    if msg.subject != subjects.scheduler_hint(hint.job_id):
                        raise MalformedMessage(f"hint on job {hint.job_id!r} arrived on {msg.subject}")
                    m.reports.labels("hint").inc()
                    hints.append((hint.job_id, hint.state))
                    continue
                parts = subjects.job_subject_parts(msg.subject)
                if parts is None or parts[2] is None:
                    raise MalformedMessage(f"not a job report subject: {msg.subject}")
                job_id, kind, node = parts
                data = msg.data
                if _NUL in data:
                    # A job printed binary output: PostgreSQL text and jsonb cannot hold NUL, and one such line
                    # would fail the whole batch (and again on every redelivery). Keep it, with U+FFFD instead.
                    data = data.replace(_NUL, b"\\ufffd")
                if kind == "state":
                    ev = decode(JobStateEvent, data, msg.subject)
                    if ev.job_id != job_id:
                        raise MalformedMessage(f"state of job {ev.job_id!r} arrived on {msg.subject}")
                    if ev.source != "agent" or ev.node != node:
                        raise MalformedMessage(f"report from {ev.source} {ev.node!r} on node {node}'s subject")
                    m.reports.labels("state").inc()
                    self._infer_running(ev, transitions, running)
                    if ev.state == JobState.RUNNING:
                        running.add(ev.job_id)
                    transitions.append(Transition(
                        ev.job_id, ev.state, source="agent", node=ev.node, attempt=ev.attempt, time=ev.time,
                        pid=ev.pid, exit_code=ev.exit_code, result=ev.result, error=ev.error, reason=ev.reason))
                else:
                    line = decode(JobLogLine, data, msg.subject)
                    if line.job_id != job_id:
                        raise MalformedMessage(f"log of job {line.job_id!r} arrived on {msg.subject}")
                    m.reports.labels("log").inc()
                    job = self.sched.active.get(job_id)
                    if job is None or job.node != node or job.attempt != line.attempt:
                        # Output of a job not running there (now): a late line of a lost attempt, or a forgery.
                        m.reports_refused.labels("log_not_from_job_node").inc()
                        continue
                    if line.seq < self.s.job_log_max_lines:
                        log_rows.append((line.job_id, line.attempt, line.seq, line.stream, line.line, line.time))
            except MalformedMessage as exc:
                m.reports_malformed.inc()
                log.warning("malformed job message dead-lettered", extra={"subject": msg.subject,
                                                                          "error": exc.message})
                await dead_letter(self.rt.nc, "jobs", msg.subject, msg.data, exc.message)

        # (Earlier batches writing these jobs are done: see the top.) Later batches wait for ours.
        done = asyncio.Event()
        mine = {t.job_id for t in transitions}
        for job_id in mine:
            self._writing[job_id] = done
        if locked is not None:
            locked.set()  # (the next batch may start: it waits for our jobs, if it has any)
        try:
            # Decided on the leader's copies of the jobs and written in one statement that commits on its own; what
            # that cannot settle (a job without a copy, or whose row changed, or a refusal on the copy) goes through
            # the locked transaction, which decides on the row. Log lines go with whichever runs first.
            applied, transitions, stored = await self.sched.lifecycle.apply_known(
                transitions, self.sched.active.get, held=self.held, logs=log_rows)
            more, refused = await self.sched.lifecycle.apply(transitions, fence=self.sched.fence,
                                                             logs=[] if stored else log_rows)
            applied += more
        finally:
            done.set()
            for job_id in mine:
                if self._writing.get(job_id) is done:
                    del self._writing[job_id]
        for msg in msgs:
            try:
                await msg.ack()
            except Exception:
                pass  # redelivered later, and applying it again changes nothing
        for t, why in refused:
            if why.duplicate:
                m.reports_refused.labels("duplicate").inc()
                continue
            m.reports_refused.labels("stale_node" if why.stale_node else "invalid").inc()
            log.warning("job report refused", extra={"job_id": t.job_id, "state": t.to.value, "node": t.node,
                                                     "attempt": t.attempt, "why": why.reason})
            if t.to == JobState.RUNNING and t.node and self._stray(t):
                self.on_stray(t.node, t.job_id, f"job is not assigned to {t.node} (attempt {t.attempt})")
        for a in applied:
            if a.transition.source == "agent" and a.job.attempt != (a.transition.attempt or a.job.attempt):
                log.info("report of another attempt applied", extra={"job_id": a.job.id})
        if hints:
            self.on_hint(hints)

    def _infer_running(self, ev: JobStateEvent, transitions: list[Transition], running: set[str]) -> None:
        """A final report saying the job ran, for a job we still hold as SCHEDULED: its RUNNING report is late
        (held by a replica that died with it unacknowledged, then redelivered after newer messages). Record the
        RUNNING it implies, dated from the report, so the job's history stays whole; the late report is then
        refused as old news."""
        if ev.state not in FINAL_STATES or ev.prev_state != JobState.RUNNING:
            return
        job = self.sched.active.get(ev.job_id)
        if job is None or job.state != JobState.SCHEDULED or job.attempt != ev.attempt or job.node != ev.node:
            return
        if ev.job_id in running:
            return
        running.add(ev.job_id)
        started = ev.time - timedelta(seconds=ev.duration_s or 0.0)
        transitions.append(Transition(ev.job_id, JobState.RUNNING, source="agent", node=ev.node, attempt=ev.attempt,
                                      time=started, pid=ev.pid, only_from=frozenset({JobState.SCHEDULED}),
                                      only_attempt=ev.attempt,
                                      reason="inferred from its final report (the RUNNING report came late)"))

    def _stray(self, t: Transition) -> bool:
        """A RUNNING report we refused: worth a cancel unless the node runs the job's current attempt (then the
        report is only old news, and cancelling would kill the legitimate run)."""
        job = self.sched.active.get(t.job_id)
        if job is None:
            return True  # final, queued, or unknown: nothing should run
        return job.node != t.node or job.state in FINAL_STATES
