"""Live job output for people watching: log lines to WebSocket clients subscribed to `job:<id>`, the `jobs` part
of the dashboard snapshot, and `GET /v1/jobs/{id}/logs?follow=true` as server-sent events.

Every replica does this from core NATS (not only the leader), so a client may be connected to any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from nats.aio.msg import Msg

from orchestrator.errors import DatabaseUnavailable
from orchestrator.jobs import db, store
from orchestrator.jobs.model import Job
from orchestrator.runtime import Runtime
from services import subjects
from services.bus import decode
from services.errors import MalformedMessage
from services.schemas import FINAL_STATES, JobLogLine, JobStateEvent

log = logging.getLogger("aether.jobs.live")

KEEPALIVE_S = 15.0
RECHECK_S = 2.0
SNAPSHOT_LIMIT = 200


class JobNodes:
    """Which node each watched job is on, so that live lines and reports are shown only when they come from it
    (any agent may publish output on its own subjects, for any job id). Read from the database, cached briefly:
    it changes only when the job is placed again."""

    def __init__(self, rt: Runtime, ttl_s: float = RECHECK_S, max_jobs: int = 10000) -> None:
        self.rt = rt
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.cache: dict[str, tuple[str | None, float]] = {}

    async def get(self, job_id: str) -> str | None:
        now = time.monotonic()
        hit = self.cache.get(job_id)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        try:
            async with db.connection(self.rt, timeout_s=2) as conn:
                node = await conn.fetchval("SELECT node FROM jobs WHERE id = $1", job_id)
        except DatabaseUnavailable:
            return hit[0] if hit is not None else None
        if len(self.cache) >= self.max_jobs:
            self.cache.clear()  # (only watched jobs are looked up: this is rare)
        self.cache[job_id] = (node, now)
        return node

    async def sent_by_its_node(self, job_id: str, node: str | None) -> bool:
        return node is not None and node == await self.get(job_id)


def job_nodes(rt: Runtime) -> JobNodes:
    return rt.components.setdefault("job_nodes", JobNodes(rt))


def log_event(line: JobLogLine) -> dict[str, Any]:
    return {"type": "log", "job_id": line.job_id, "attempt": line.attempt, "seq": line.seq, "stream": line.stream,
            "line": line.line, "time": line.time.isoformat()}


async def start(rt: Runtime) -> None:
    nodes = job_nodes(rt)

    async def on_log(msg: Msg) -> None:
        parts = subjects.job_subject_parts(msg.subject)
        if parts is None:
            return
        job_id, _, node = parts
        topic = f"job:{job_id}"
        # Only decode for someone watching: most lines have no live audience.
        if not any(topic in c.topics for c in rt.hub.clients) or not await nodes.sent_by_its_node(job_id, node):
            return
        try:
            line = decode(JobLogLine, msg.data, msg.subject)
        except MalformedMessage:
            return  # the leader's consumer counts and dead-letters it
        rt.hub.publish(log_event(line), topic=topic)

    await rt.nc.subscribe(subjects.JOB_LOG_ALL, cb=on_log)

    async def jobs_part(principal: Any) -> dict[str, Any]:
        # A tenant's token sees its own tenant's jobs only (as over HTTP); admins and cluster-wide tokens all.
        tenant = getattr(principal, "tenant", None)
        try:
            async with db.connection(rt, timeout_s=5) as conn:
                queued = await store.list_jobs(conn, states=["PENDING"], tenant=tenant, limit=SNAPSHOT_LIMIT)
                running = await store.list_jobs(conn, states=["SCHEDULED", "RUNNING"], tenant=tenant,
                                                limit=SNAPSHOT_LIMIT)
                rows = await conn.fetch("SELECT * FROM jobs WHERE finished_at IS NOT NULL "
                                        "AND ($1::text IS NULL OR tenant = $1) ORDER BY finished_at DESC LIMIT 50",
                                        tenant)
        except DatabaseUnavailable as exc:
            return {"queued": [], "running": [], "recent": [], "error": exc.message}
        return {"queued": [j.summary() for j in queued], "running": [j.summary() for j in running],
                "recent": [Job.from_row(r).summary() for r in rows]}

    rt.hub.scoped_parts["jobs"] = jobs_part


def _stored_line(r: Any) -> bytes:
    """A `log` event for a line read back from the job_logs table."""
    return sse("log", {"attempt": r["attempt"], "seq": r["seq"], "stream": r["stream"], "line": r["line"],
                       "time": r["time"].isoformat()})


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(data, default=str) + b"\n\n"


class _Seen:
    """Which (attempt, seq) lines a follower already sent: one bit per line, per attempt."""

    def __init__(self) -> None:
        self.bits: dict[int, bytearray] = {}

    def add(self, attempt: int, seq: int) -> bool:
        """True if new."""
        b = self.bits.setdefault(attempt, bytearray())
        byte, bit = divmod(seq, 8)
        if byte >= len(b):
            b.extend(b"\0" * (byte - len(b) + 1 + 1024))
        if b[byte] & (1 << bit):
            return False
        b[byte] |= 1 << bit
        return True


async def follow(rt: Runtime, job_id: str, *, limit_lines: int) -> AsyncIterator[bytes]:
    """SSE: `log` events (stored lines first, then live ones), `state` events, and one `end` event once the job
    is final (with its state, exit code and result). Lines are never sent twice nor skipped."""
    queue: asyncio.Queue[Msg] = asyncio.Queue(10000)

    async def cb(msg: Msg) -> None:
        try:
            queue.put_nowait(msg)
        except asyncio.QueueFull:
            pass  # a reader this far behind gets the missing lines from the database at the end

    subs = [await rt.nc.subscribe(subjects.job_all(job_id), cb=cb)]
    nodes = job_nodes(rt)
    seen = _Seen()
    try:
        async with db.connection(rt) as conn:
            rows = await store.logs(conn, job_id, limit=limit_lines)
        last_id = max((r["id"] for r in rows), default=0)
        for r in rows:
            if seen.add(r["attempt"], r["seq"]):
                yield _stored_line(r)
        loop = asyncio.get_running_loop()
        last_check = 0.0
        last_sent = first_check = loop.time()
        while True:
            final = None
            if loop.time() - last_check >= RECHECK_S:
                last_check = loop.time()
                final = await _final(rt, job_id)
                if final is None and last_check > first_check:
                    # A line published before our subscription took effect but stored only after the first read
                    # came neither way: the stored lines are looked at again (the seen bits skip the rest).
                    async with db.connection(rt) as conn:
                        rows = await store.logs(conn, job_id, after_id=last_id, limit=limit_lines)
                    for r in rows:
                        last_id = max(last_id, r["id"])
                        if seen.add(r["attempt"], r["seq"]):
                            last_sent = loop.time()
                            yield _stored_line(r)
            if final is None:
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout=RECHECK_S)
                except TimeoutError:
                    if loop.time() - last_sent >= KEEPALIVE_S:  # proxies close streams that stay silent
                        last_sent = loop.time()
                        yield b": keepalive\n\n"
                    continue
                last_sent = loop.time()
                _, kind, node = subjects.job_subject_parts(msg.subject) or (None, None, None)
                if node is not None and not await nodes.sent_by_its_node(job_id, node):
                    continue  # an agent's line or report on a job that is not on its node
                if kind == "log":
                    try:
                        line = decode(JobLogLine, msg.data, msg.subject)
                    except MalformedMessage:
                        continue
                    if seen.add(line.attempt, line.seq):
                        yield sse("log", {k: v for k, v in log_event(line).items() if k not in ("type", "job_id")})
                    continue
                try:
                    ev = decode(JobStateEvent, msg.data, msg.subject)
                except MalformedMessage:
                    continue
                if kind != "state" or (node is not None and ev.node != node):
                    continue
                yield sse("state", {"state": ev.state.value, "source": ev.source, "attempt": ev.attempt,
                                    "node": ev.node, "time": ev.time.isoformat(), "reason": ev.reason})
                if ev.state in FINAL_STATES:
                    # Confirm with the database: the report may still be on its way there, or be refused.
                    final = await _wait_final(rt, job_id)
                if final is None:
                    continue
            # Final: every line was stored before the final state was, so one last read completes the output.
            async with db.connection(rt) as conn:
                rows = await store.logs(conn, job_id, limit=limit_lines)
            for r in rows:
                if seen.add(r["attempt"], r["seq"]):
                    yield _stored_line(r)
            yield sse("end", final)
            return
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def _final(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    async with db.connection(rt) as conn:
        job = await store.get_job(conn, job_id)
    if job is None:
        return {"state": None, "error": "job no longer exists"}
    if job.state in FINAL_STATES:
        return {"state": job.state.value, "exit_code": job.exit_code, "result": job.result, "error": job.error,
                "reason": job.reason}
    return None


async def _wait_final(rt: Runtime, job_id: str, limit_s: float = 3.0) -> dict[str, Any] | None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        final = await _final(rt, job_id)
        if final is not None or asyncio.get_running_loop().time() >= deadline:
            return final
        await asyncio.sleep(0.05)
