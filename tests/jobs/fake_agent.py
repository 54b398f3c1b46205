"""A node agent that speaks the real NATS protocol (heartbeats, telemetry, run/cancel requests, job reports) but
runs nothing: tests and the scheduler benchmark script what each job does. Many can share one NATS connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services import subjects
from services.bus import ensure_jobs_stream, ensure_telemetry_stream
from services.schemas import (
    CancelCommand,
    CommandReply,
    DispatchCommand,
    GpuInventory,
    Heartbeat,
    JobLogLine,
    JobState,
    JobStateEvent,
    TelemetryBatch,
    TelemetrySample,
)

GPU_NAME = "NVIDIA H100 80GB HBM3"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Run:
    cmd: DispatchCommand
    node: str
    started: datetime = field(default_factory=now)
    seq: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: JobState | None = None


# What a job does: given the run, publish logs via `agent.log(run, ...)` and return
# (state, exit_code, result) — or wait on something the test controls.
Behaviour = Callable[["FakeAgent", Run], Awaitable[tuple[JobState, int | None, Any]]]


async def quick_success(agent: FakeAgent, run: Run) -> tuple[JobState, int | None, Any]:
    await agent.log(run, "stdout", f"hello from {run.cmd.job_id}")
    return JobState.SUCCEEDED, 0, {"ok": True, "job": run.cmd.job_id}


class FakeAgent:
    def __init__(self, nc: NATS, node: str, *, gpus: int = 2, mem_total_mb: float = 81559,
                 behaviour: Behaviour = quick_success, reply: str = "ok", heartbeat_s: float = 0.5,
                 telemetry_s: float = 0.5, js_publish: bool = True) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.node = node
        self.gpus = gpus
        self.mem_total_mb = mem_total_mb
        self.behaviour = behaviour
        self.reply = reply  # "ok", "silent" (never answers run requests) or "refuse"
        self.heartbeat_s = heartbeat_s
        self.telemetry_s = telemetry_s
        self.js_publish = js_publish
        self.dispatches: list[DispatchCommand] = []
        self.cancels: list[CancelCommand] = []
        self.runs: dict[tuple[str, int], Run] = {}
        self.running: dict[str, Run] = {}  # job id -> run
        self.max_mem_seen: dict[int, float] = {}  # GPU index -> peak memory promised by concurrent runs
        self.list_in_heartbeat = True
        self.extra_running: list[str] = []  # job ids to claim in heartbeats besides the real ones
        self.healthy = True
        self._subs: list = []
        self._tasks: list[asyncio.Task] = []
        self._seq = 0

    def uuid(self, i: int) -> str:
        return f"GPU-{self.node}-{i}"

    async def start(self) -> FakeAgent:
        # As the real agent does: whoever starts first creates the streams.
        await ensure_telemetry_stream(self.js)
        await ensure_jobs_stream(self.js)
        self._subs.append(await self.nc.subscribe(subjects.cmd(self.node, "run"), cb=self._on_run))
        self._subs.append(await self.nc.subscribe(subjects.cmd(self.node, "cancel"), cb=self._on_cancel))
        await self.heartbeat()
        await self.telemetry()
        self._tasks.append(asyncio.create_task(self._loop()))
        return self

    async def stop(self) -> None:
        """Goes silent, as a dead node does: no heartbeats, no answers, no reports."""
        for t in self._tasks:
            t.cancel()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for run in self.running.values():
            run.done.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_hb = next_tm = loop.time()
        pending: set[asyncio.Task] = set()
        while True:
            t = loop.time()
            try:
                if t >= next_hb:
                    next_hb = t + self.heartbeat_s
                    await self.heartbeat()
                if t >= next_tm:
                    next_tm = t + self.telemetry_s
                    # A slow JetStream ack must not hold back heartbeats: telemetry goes on its own.
                    task = asyncio.create_task(self.telemetry())
                    pending.add(task)
                    task.add_done_callback(lambda tk: (pending.discard(tk), tk.cancelled() or tk.exception()))
            except Exception:  # like a real agent, keep beating through a NATS hiccup
                pass
            await asyncio.sleep(max(0.0, min(next_hb, next_tm) - loop.time()))

    def inventory(self) -> list[GpuInventory]:
        return [GpuInventory(uuid=self.uuid(i), index=i, name=GPU_NAME, mem_total_mb=self.mem_total_mb,
                             power_limit_w=700, healthy=self.healthy) for i in range(self.gpus)]

    async def retire(self) -> None:
        """Stay connected but take every GPU out of placement (reported unhealthy), refusing new jobs: other
        tests sharing the orchestrator never land on this agent."""
        self.healthy = False
        self.reply = "refuse"
        await self.heartbeat()

    async def heartbeat(self) -> None:
        hb = Heartbeat(node=self.node, time=now(), agent_version="fake", interval_s=self.telemetry_s, simulated=True,
                       gpus=self.inventory(),
                       running_jobs=(sorted(self.running) if self.list_in_heartbeat else []) + self.extra_running)
        await self.nc.publish(subjects.heartbeat(self.node), hb.to_bytes())

    def mem_used(self, index: int) -> float:
        return sum(r.cmd.spec.gpu_mem_mb for r in self.running.values() if index in r.cmd.gpu_indices)

    async def telemetry(self) -> None:
        t = now()
        self._seq += 1
        batch = TelemetryBatch(node=self.node, seq=self._seq, time=t, interval_s=self.telemetry_s, samples=[
            TelemetrySample(time=t, node=self.node, gpu_index=i, gpu_uuid=self.uuid(i), name=GPU_NAME,
                            util_gpu_pct=min(100.0, 40.0 * sum(1 for r in self.running.values()
                                                               if i in r.cmd.gpu_indices)),
                            mem_used_mb=min(self.mem_total_mb, self.mem_used(i)), mem_total_mb=self.mem_total_mb,
                            temp_c=40, power_w=100, power_limit_w=700, healthy=self.healthy)
            for i in range(self.gpus)])
        await self.js.publish(subjects.telemetry(self.node), batch.to_bytes(),
                              headers={"Nats-Msg-Id": batch.msg_id()})

    async def _publish(self, subject: str, data: bytes) -> None:
        for attempt in range(5):
            try:
                if self.js_publish:
                    await self.js.publish(subject, data)
                else:  # core NATS: the stream stores it all the same, without the ack round trip
                    await self.nc.publish(subject, data)
                return
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))

    async def state(self, run: Run, state: JobState, prev: JobState | None, **kw: Any) -> None:
        ev = JobStateEvent(job_id=run.cmd.job_id, state=state, prev_state=prev, time=now(), source="agent",
                           attempt=run.cmd.attempt, node=run.node, gpu_uuids=run.cmd.gpu_uuids, **kw)
        await self._publish(subjects.job_report(run.cmd.job_id, run.node), ev.to_bytes())

    async def log(self, run: Run, stream: str, line: str) -> None:
        msg = JobLogLine(job_id=run.cmd.job_id, attempt=run.cmd.attempt, seq=run.seq, stream=stream, line=line,
                         time=now())
        run.seq += 1
        await self._publish(subjects.job_log(run.cmd.job_id, run.node), msg.to_bytes())

    async def _on_run(self, msg: Msg) -> None:
        cmd = DispatchCommand.model_validate_json(msg.data)
        self.dispatches.append(cmd)
        if self.reply == "silent":
            return
        if self.reply == "refuse":
            await msg.respond(CommandReply(ok=False, code="JOB_REJECTED", message="refused by test",
                                           job_id=cmd.job_id).to_bytes())
            return
        key = (cmd.job_id, cmd.attempt)
        if key in self.runs:  # the real agent's rule: one run per (job, attempt)
            await msg.respond(CommandReply(ok=True, job_id=cmd.job_id, message="duplicate").to_bytes())
            return
        run = Run(cmd, self.node)
        self.runs[key] = run
        self.running[cmd.job_id] = run
        for i in cmd.gpu_indices:
            self.max_mem_seen[i] = max(self.max_mem_seen.get(i, 0.0), self.mem_used(i))
        await msg.respond(CommandReply(ok=True, job_id=cmd.job_id, message="accepted").to_bytes())
        self._tasks.append(asyncio.create_task(self._run(run)))

    async def _run(self, run: Run) -> None:
        await self.state(run, JobState.RUNNING, JobState.SCHEDULED, pid=4242)
        task = asyncio.create_task(self.behaviour(self, run))
        cancelled = asyncio.create_task(run.done.wait())
        await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
        self.running.pop(run.cmd.job_id, None)
        if run.outcome is not None:  # cancelled, or the agent stopped
            if self._subs:
                await self.state(run, run.outcome, JobState.RUNNING, error="cancelled", reason="cancelled")
            return
        state, code, result = task.result()
        run.outcome = state
        await self.state(run, state, JobState.RUNNING, exit_code=code, result=result,
                         error=None if state == JobState.SUCCEEDED else f"exit code {code}")

    async def _on_cancel(self, msg: Msg) -> None:
        cmd = CancelCommand.model_validate_json(msg.data)
        self.cancels.append(cmd)
        run = self.running.get(cmd.job_id)
        if run is None:
            await msg.respond(CommandReply(ok=False, code="JOB_NOT_FOUND", job_id=cmd.job_id).to_bytes())
            return
        run.outcome = JobState.CANCELLED
        run.done.set()
        await msg.respond(CommandReply(ok=True, job_id=cmd.job_id, message="cancelling").to_bytes())
