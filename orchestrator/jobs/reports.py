"""Agents' job reports (leader only): a durable JetStream consumer of `aether.jobs.*.state.<node>` and
`aether.jobs.*.log.<node>` (plus the orchestrators' own `aether.jobs.*.state`, read as hints).

Each fetched batch is applied in ONE transaction — state reports through the state machine, log lines stored —
and acked only after the commit, so nothing is lost across a crash and a redelivery changes nothing (a state the
job already has is a duplicate; a log line is keyed by job, attempt and seq). A report from a node the job is not
assigned to is refused, and if it says the job runs there, that node is told to cancel it. The node is the one in
the subject, which only that node's NATS account may publish on: a report whose body names another node, or an
agent's report on the orchestrator's subject, is malformed (dead-lettered and counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import orjson
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from orchestrator.errors import DatabaseUnavailable
from orchestrator.jobs.leader import NotLeader
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.states import Transition
from orchestrator.runtime import Runtime
from services import subjects
from services.bus import JOBS_STREAM, dead_letter, decode, ensure_jobs_stream, js_delivery
from services.errors import MalformedMessage
from services.schemas import FINAL_STATES, JobLogLine, JobState, JobStateEvent

log = logging.getLogger("aether.jobs.reports")
_NUL = b"\\u0000"  # NUL, as JSON escapes it

IDLE_POLL_S = 0.5
# A leader that dies holding a fetched batch delays those reports (and the reconciler's verdicts) this long.
REPORTS_ACK_WAIT_S = 10.0
# Under load, whether every report so far is applied is asked at most this often (the idle check is not limited).
CAUGHT_UP_EVERY_S = 0.1


def _orchestrator_hint(data: bytes, job_id: str) -> tuple[str, JobState] | None:
    """(job id, state) of an orchestrator-published state event, without a full validation; None otherwise."""
    try:
        raw = orjson.loads(data)
        if raw.get("source") == "orchestrator" and raw.get("job_id") == job_id:
            return job_id, JobState(raw.get("state"))
    except (orjson.JSONDecodeError, ValueError, AttributeError):
        pass  # the full decode says what is wrong with it
    return None


def _stream_seq(msg) -> int:
    d = js_delivery(msg.reply)
    # Not a JetStream message (cannot happen on a pull subscription): claim nothing.
    return d[1] if d is not None else 1 << 62


class Reports:
    def __init__(self, rt: Runtime, sched: Scheduler, on_stray: Callable[[str, str, str], None],
                 on_hint: Callable[[list[tuple[str, JobState]]], None]) -> None:
        self.rt = rt
        self.s = rt.settings
        self.sched = sched
        self.on_stray = on_stray
        self.on_hint = on_hint
        self.caught_up_at = 0.0  # monotonic: every report published before this has been applied
        self.progress = asyncio.Event()
        self._asked_at = 0.0  # monotonic: when a batch last asked the server whether we are caught up

    async def run(self) -> None:
        await ensure_jobs_stream(self.rt.js, max_age_s=self.s.job_stream_max_age_s, replicas=self.s.stream_replicas)
        cfg = ConsumerConfig(durable_name=self.s.job_reports_consumer, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.ALL, ack_wait=REPORTS_ACK_WAIT_S, max_deliver=-1,
                             max_ack_pending=max(1000, self.s.job_reports_batch * 4),
                             filter_subjects=[subjects.JOB_STATE_ALL, subjects.JOB_REPORT_ALL,
                                              subjects.JOB_LOG_ALL])
        try:
            await self.rt.js.add_consumer(JOBS_STREAM, cfg)
        except BadRequestError as exc:
            # It exists with other settings (an older version made it): keep it and its acknowledgements.
            log.warning("job reports consumer kept with its existing settings", extra={"error": repr(exc)})
        psub = await self.rt.js.pull_subscribe_bind(durable=self.s.job_reports_consumer, stream=JOBS_STREAM)
        log.info("job reports consumer started", extra={"consumer": self.s.job_reports_consumer})
        batch = self.s.job_reports_batch
        ahead: tuple[float, asyncio.Task] | None = None
        applying: asyncio.Task | None = None  # the latest batch being applied
        try:
            while True:
                # Two things overlap under load, where each used to wait for the other: the next batch is fetched
                # while one is applied, and a batch's transaction starts as soon as the previous one holds its row
                # locks (a job in both then waits for that commit, so reports of one job still apply in order).
                # Each batch is acked after its own commit.
                started, fetch = ahead or (time.monotonic(), asyncio.create_task(self._fetch(psub, batch)))
                ahead = None
                try:
                    msgs = await fetch
                except (TimeoutError, NatsTimeout):
                    if applying is not None:
                        await applying
                        applying = None
                    await self._note_caught_up(psub, started)
                    continue
                except Exception as exc:  # NATS reconnecting
                    log.warning("job reports fetch failed", extra={"error": repr(exc)})
                    await asyncio.sleep(0.5)
                    continue
                ahead = (time.monotonic(), asyncio.create_task(self._fetch(psub, batch)))
                locked = asyncio.Event()
                applying = asyncio.create_task(self._apply(psub, msgs, locked, applying,
                                                           started if len(msgs) < batch else None))
                until_locked = asyncio.create_task(locked.wait())
                await asyncio.wait({applying, until_locked}, return_when=asyncio.FIRST_COMPLETED)
                until_locked.cancel()
                if applying.done():
                    applying.result()  # (raises what it raised)
        finally:
            if applying is not None:
                applying.cancel()
                await asyncio.wait({applying})
            if ahead is not None:
                await self._drop(ahead[1])
            try:
                await psub.unsubscribe()
            except Exception as exc:
                log.warning("job reports subscription not closed", extra={"error": repr(exc)})

    async def _apply(self, psub, msgs, locked: asyncio.Event, before: asyncio.Task | None,
                     caught_up_as_of: float | None) -> None:
        try:
            await self.handle_until_done(msgs, locked)
        finally:
            locked.set()
            if before is not None:
                await before  # (earlier batches finish first: caught up means everything before is applied)
        if caught_up_as_of is not None and time.monotonic() - self._asked_at >= CAUGHT_UP_EVERY_S:
            # (Under load nearly every batch is short: asking the server after each one cost a request per batch,
            # for a claim the reconciler reads once a second.)
            self._asked_at = time.monotonic()
            await self._note_caught_up(psub, caught_up_as_of, applied_upto=max(_stream_seq(m) for m in msgs))

    async def _fetch(self, psub, batch: int) -> list:
        # A batch fetch waits for a full batch or its timeout, so a lone report would wait the whole timeout:
        # long-poll for one (returns as soon as it arrives), then take what else is there with a short fetch.
        msgs = await psub.fetch(1, timeout=IDLE_POLL_S)
        if batch > 1:
            try:
                msgs += await psub.fetch(batch - 1, timeout=self.s.job_reports_fetch_s)
            except Exception:  # (a timeout: nothing more right now) the first is handled anyway
                pass
        return msgs

    @staticmethod
    async def _drop(task: asyncio.Task) -> None:
        """Stopping with a batch fetched ahead: hand its reports back unapplied (nak), for whoever leads next."""
        task.cancel()
        try:
            msgs = await task
        except BaseException:
            return
        for msg in msgs:
            try:
                await msg.nak()
            except Exception:
                pass

    async def _note_caught_up(self, psub, started: float, applied_upto: int = 0) -> None:
        """Everything there was when the fetch of `started` began has been delivered to us: caught up as of then,
        unless some of it is held unacknowledged by another client (a leader that died or stepped down holding a
        fetched batch, which the server redelivers only after `ack_wait`). Claiming to be caught up then would let
        the reconciler call a job that finished LOST and run it again.

        Idle (`applied_upto` 0): nothing may be pending or unacknowledged. After a short batch: the consumer's ack
        floor must have reached the batch's last report, so what the batch fetched ahead of it holds (newer
        reports, ours) does not count, and under steady traffic the reconciler still gets its answer."""
        try:
            info = await psub.consumer_info()
        except Exception as exc:  # NATS reconnecting: claim nothing
            log.warning("job reports consumer info failed", extra={"error": repr(exc)})
            return
        if applied_upto:
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            if (floor or 0) < applied_upto:
                return
        elif info.num_pending or info.num_ack_pending:
            return
        self.caught_up_at = started
        self.progress.set()

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
        transitions: list[Transition] = []
        running: set[str] = set()  # jobs whose RUNNING this batch already applies
        log_rows: list[tuple] = []
        hints: list[tuple[str, JobState]] = []
        for msg in msgs:
            try:
                parts = subjects.job_subject_parts(msg.subject)
                if parts is None:
                    raise MalformedMessage(f"not a job subject: {msg.subject}")
                job_id, kind, node = parts
                data = msg.data
                if _NUL in data:
                    # A job printed binary output: PostgreSQL text and jsonb cannot hold NUL, and one such line
                    # would fail the whole batch (and again on every redelivery). Keep it, with U+FFFD instead.
                    data = data.replace(_NUL, b"\\ufffd")
                if kind == "state":
                    hint = _orchestrator_hint(data, job_id) if node is None else None
                    if hint is not None:  # our own (or another replica's) transition: only a hint, cheaply read
                        m.reports.labels("state").inc()
                        hints.append(hint)
                        continue
                    ev = decode(JobStateEvent, data, msg.subject)
                    if ev.job_id != job_id:
                        raise MalformedMessage(f"state of job {ev.job_id!r} arrived on {msg.subject}")
                    if node is None and ev.source == "agent":
                        raise MalformedMessage(f"an agent's report on the orchestrator's subject {msg.subject}")
                    if node is not None and (ev.source != "agent" or ev.node != node):
                        raise MalformedMessage(f"report from {ev.source} {ev.node!r} on node {node}'s subject")
                    m.reports.labels("state").inc()
                    if ev.source == "orchestrator":
                        hints.append((ev.job_id, ev.state))
                    else:
                        self._infer_running(ev, transitions, running)
                        if ev.state == JobState.RUNNING:
                            running.add(ev.job_id)
                        transitions.append(Transition(
                            ev.job_id, ev.state, source="agent", node=ev.node, attempt=ev.attempt, time=ev.time,
                            pid=ev.pid, exit_code=ev.exit_code, result=ev.result, error=ev.error, reason=ev.reason))
                else:
                    if node is None:
                        raise MalformedMessage(f"a log line without its node: {msg.subject}")
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

        # Log lines lock no job row: their foreign key's key-share lock does not conflict with the transitions'
        # (store.lock_jobs), so a batch whose lines belong to a job another batch is moving neither waits for it
        # nor holds it up - consecutive batches (a job's RUNNING, then its first line) used to apply one by one.
        applied, refused = await self.sched.lifecycle.apply(transitions, fence=self.sched.fence, locked=locked,
                                                            logs=log_rows)
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
