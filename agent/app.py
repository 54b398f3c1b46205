"""The agent put together: NATS connection, streams, outboxes, sampling, heartbeats, commands (run, cancel,
fault, reconcile), job runner and the HTTP endpoint, all on one event loop; `stop()` shuts it down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent import AGENT_VERSION, container
from agent.errors import AgentError, FaultInjectionUnavailable
from agent.heartbeat import Heartbeats
from agent.http import create_app
from agent.job_env import choose_python, probe_python, resolve_user
from agent.jobs import JobRunner, respond
from agent.metrics import AgentMetrics
from agent.outbox import Outbox
from agent.sampler import Sampler
from agent.settings import AgentSettings
from agent.sim import SimSource
from agent.source import GpuSource
from services import bus, subjects
from services.errors import MalformedMessage
from services.schemas import CommandReply, FaultCommand
from services.schemas.base import utcnow

log = logging.getLogger("aether.agent")

CONNECT_BACKOFF_MAX_S = 10.0
DRAIN_S = 5.0


class _QuietServer(uvicorn.Server):
    """uvicorn inside our loop: the agent owns SIGTERM/SIGINT, not the HTTP server."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Agent:
    def __init__(self, settings: AgentSettings, source: GpuSource, metrics: AgentMetrics | None = None) -> None:
        self.s = settings
        self.node: str = settings.node
        self.source = source
        self.metrics = metrics or AgentMetrics()
        self.started_at = utcnow()
        self.nc: NATS | None = None
        self.runner: JobRunner | None = None
        self.sampler: Sampler | None = None
        self.heartbeats: Heartbeats | None = None
        self.telemetry: Outbox | None = None
        self.job_outbox: Outbox | None = None
        self.job_python: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-read")
        self._tasks: list[asyncio.Task] = []
        self._subs: list[Any] = []
        self._http: _QuietServer | None = None
        self._http_task: asyncio.Task | None = None
        self.metrics.gpus.set(len(source.inventory()))

    # --- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.s.http_port:
            await self._start_http()
        self.nc = await self._connect()
        js = self.nc.jetstream()
        for ensure in (bus.ensure_telemetry_stream, bus.ensure_jobs_stream):
            try:
                await ensure(js)
            except Exception as exc:  # the outboxes ensure the stream again when a publish finds none
                log.warning("stream not ensured at start", extra={"stream": ensure.__name__, "error": repr(exc)})
        self.telemetry = Outbox("telemetry", self.nc, js, lambda: bus.ensure_telemetry_stream(js), self.metrics,
                                max_items=self.s.buffer_max_batches, timeout_s=self.s.publish_timeout_s)
        self.job_outbox = Outbox("jobs", self.nc, js, lambda: bus.ensure_jobs_stream(js), self.metrics,
                                 max_items=self.s.job_log_buffer, timeout_s=self.s.publish_timeout_s, window=64)
        user = resolve_user(self.s.job_user)
        self.job_python = await asyncio.to_thread(choose_python, self.s.job_python, user)
        has_pip = bool(self.job_python) and await asyncio.to_thread(probe_python, self.job_python, user, "import pip")
        containers = await asyncio.to_thread(container.docker_with_nvidia)
        self.runner = JobRunner(node=self.node, settings=self.s, source=self.source, nc=self.nc,
                                outbox=self.job_outbox, metrics=self.metrics, user=user, python=self.job_python,
                                python_has_pip=has_pip, containers=containers)
        self._spawn(self.telemetry.run(), "outbox-telemetry")
        await self.runner.start()
        self.sampler = Sampler(node=self.node, source=self.source, interval_s=self.s.interval_s,
                               outbox=self.telemetry, metrics=self.metrics, executor=self._executor)
        self.heartbeats = Heartbeats(nc=self.nc, node=self.node, source=self.source,
                                     running_jobs=self.runner.running_ids, interval_s=self.s.interval_s,
                                     every_s=self.s.heartbeat_s, started_at=self.started_at, metrics=self.metrics)
        self._subs = [
            await self.nc.subscribe(subjects.cmd(self.node, "run"), cb=self.runner.on_dispatch),
            await self.nc.subscribe(subjects.cmd(self.node, "cancel"), cb=self.runner.on_cancel),
            await self.nc.subscribe(subjects.cmd(self.node, "fault"), cb=self._on_fault),
            await self.nc.subscribe(subjects.cmd(self.node, "reconcile"), cb=self._on_reconcile),
        ]
        await self.nc.flush()
        # Only now do job reports go out: a LOST for a job orphaned by a restart makes the orchestrator re-queue it
        # at once, often back to this node, whose answer must then be here (not "no responders", which excludes
        # the node from placement for a minute).
        self._spawn(self.job_outbox.run(), "outbox-jobs")
        self._spawn(self.sampler.run(), "sampler")
        self._spawn(self.heartbeats.run(), "heartbeat")
        log.info("agent started", extra={
            "node": self.node, "simulated": self.source.simulated, "gpus": len(self.source.inventory()),
            "interval_s": self.s.interval_s, "nats": self.s.nats_url, "job_user": user.name,
            "job_python": self.job_python, "containers": containers, "version": AGENT_VERSION})

    async def _connect(self) -> NATS:
        """Keep trying until NATS answers: an agent may start before the server does."""
        delay = 0.5
        while True:
            try:
                return await bus.connect(self.s.nats_url, name=f"aether-agent-{self.node}", user=self.s.nats_user,
                                         password=self.s.nats_password)
            except Exception as exc:
                log.warning("NATS not reachable, retrying", extra={"nats": self.s.nats_url, "error": repr(exc),
                                                                   "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_BACKOFF_MAX_S)

    async def _start_http(self) -> None:
        cfg = uvicorn.Config(create_app(self.health, self.metrics), host=self.s.http_host, port=self.s.http_port,
                             log_config=None, access_log=False, lifespan="off")
        self._http = _QuietServer(cfg)
        self._http_task = asyncio.create_task(self._http.serve(), name="http")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not self._http.started:  # uvicorn exposes no event for "listening"
            if self._http_task.done():
                exc = self._http_task.exception()
                raise AgentError(f"HTTP endpoint {self.s.http_host}:{self.s.http_port} did not start: {exc!r}")
            if loop.time() > deadline:
                raise AgentError("HTTP endpoint did not start within 10 s")
            await asyncio.sleep(0.01)

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    @staticmethod
    def _task_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task died", extra={"task": task.get_name()}, exc_info=task.exception())

    async def stop(self) -> None:
        """Refuse new work, end running jobs (reported LOST), flush what is buffered, close."""
        log.info("agent stopping", extra={"node": self.node})
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.runner is not None:
            await self.runner.shutdown()
        for name in ("sampler", "heartbeat"):
            for t in self._tasks:
                if t.get_name() == name:
                    t.cancel()
        for outbox in (self.job_outbox, self.telemetry):
            if outbox is not None and self.nc is not None and self.nc.is_connected:
                await outbox.wait_empty(DRAIN_S)
        if self.runner is not None:
            with contextlib.suppress(OSError):
                await self.runner.save()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), DRAIN_S)
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task is not None:
                await asyncio.gather(self._http_task, return_exceptions=True)
        self._executor.shutdown(wait=True)
        self.source.close()
        log.info("agent stopped", extra={"node": self.node})

    # --- commands besides jobs ----------------------------------------------------------------------------
    async def _on_fault(self, msg: Msg) -> None:
        try:
            cmd = bus.decode(FaultCommand, msg.data, msg.subject)
        except MalformedMessage as exc:
            self.metrics.malformed.labels("fault").inc()
            await bus.dead_letter(self.nc, "agent", msg.subject, msg.data, exc.message)
            await respond(msg, CommandReply(ok=False, code=exc.code, message=exc.message))
            return
        try:
            if not isinstance(self.source, SimSource):
                raise FaultInjectionUnavailable(f"{self.node} reads real GPUs: faults can only be injected into "
                                                "simulated ones")
            message = self.source.apply_fault(cmd)
        except AgentError as exc:
            await respond(msg, CommandReply(ok=False, code=exc.code, message=exc.message))
            return
        self.metrics.faults_injected.labels(cmd.fault.value).inc()
        log.warning("fault injected", extra={"fault": cmd.fault.value, "gpu_index": cmd.gpu_index,
                                             "detail": message})
        await respond(msg, CommandReply(ok=True, message=message))

    async def _on_reconcile(self, msg: Msg) -> None:
        """The orchestrator asks what runs here: the answer is a fresh heartbeat (its `running_jobs`)."""
        if self.heartbeats is not None:
            await self.heartbeats.publish()
        running = self.runner.running_ids() if self.runner else []
        await respond(msg, CommandReply(ok=True, message=f"heartbeat sent; running jobs: {','.join(running)}"))

    # --- health -------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        loop_time = time.monotonic()
        last = self.sampler.last_tick_mono if self.sampler else None
        age = None if last is None else round(loop_time - last, 3)
        stale_after = 5 * self.s.interval_s + 5
        samples = self.sampler.last_samples if self.sampler else []
        unhealthy = [s.gpu_index for s in samples if not s.healthy]
        connected = bool(self.nc and self.nc.is_connected)
        if self.sampler is None or age is None:
            status = "starting"
        elif age > stale_after:
            status = "failing"
        elif not connected or unhealthy:
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status, "node": self.node, "version": AGENT_VERSION, "simulated": self.source.simulated,
            "nats_connected": connected, "gpus": len(self.source.inventory()), "unhealthy_gpus": unhealthy,
            "last_tick_age_s": age, "interval_s": self.s.interval_s,
            "telemetry_buffered": len(self.telemetry) if self.telemetry else 0,
            "telemetry_dropped": self.telemetry.dropped if self.telemetry else 0,
            "running_jobs": self.runner.running_ids() if self.runner else [],
            "job_python": self.job_python, "started_at": self.started_at.isoformat(),
        }
