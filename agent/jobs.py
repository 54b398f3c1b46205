"""The agent's side of jobs: accept dispatches (each job attempt runs at most once), run them in their own process
group on their GPUs, stream output and state changes to JetStream, enforce time limits, cancel, report results.

On restart the agent finds, in its state file, the jobs it was running: it kills any of their processes still
alive (it cannot follow the output or exit status of a process it did not start) and reports each job LOST with
the reason, so the orchestrator re-queues it. A job is therefore never left running unsupervised or run twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent import container
from agent.errors import AgentError, JobConflict, JobNotFound, JobRejected
from agent.job_env import JOB_ID_RE, JobUser, UidPool, build_env, job_dir, prepare_dir
from agent.job_process import group_alive, kill_group, read_lines, spawn
from agent.job_store import JobStore, job_key
from agent.metrics import AgentMetrics
from agent.outbox import Item, Outbox
from agent.settings import AgentSettings
from agent.source import GpuSource
from services import subjects
from services.bus import dead_letter, decode
from services.errors import MalformedMessage
from services.gpu_physics import workload_for
from services.schemas import CancelCommand, CommandReply, DispatchCommand, JobLogLine, JobState, JobStateEvent
from services.schemas.base import utcnow

log = logging.getLogger("aether.agent.jobs")

LEFTOVER_GRACE_S = 2.0  # background processes a finished job left behind get this long after SIGTERM
READER_DRAIN_S = 5.0


class SetupFailed(AgentError):
    code = "JOB_SETUP_FAILED"


@dataclass(eq=False)
class Job:
    cmd: DispatchCommand
    key: str
    workdir: Path
    accepted_at: datetime
    accepted_mono: float
    state: JobState = JobState.SCHEDULED
    proc: asyncio.subprocess.Process | None = None  # what runs now: a setup step or the job itself
    pid: int | None = None
    started_at: datetime | None = None
    started_mono: float | None = None
    stop_state: JobState | None = None
    stop_reason: str | None = None
    kill_task: asyncio.Task | None = None
    timer: asyncio.TimerHandle | None = None
    seq: int = 0
    last_stdout: str = ""
    last_stderr: str = ""
    container: bool = False
    task: asyncio.Task | None = None
    user: JobUser = JobUser(None, None, None)  # who it runs as (its own uid when the agent has a uid pool)


class JobRunner:
    def __init__(self, *, node: str, settings: AgentSettings, source: GpuSource, nc: NATS, outbox: Outbox,
                 metrics: AgentMetrics, user: JobUser, python: str | None, python_has_pip: bool = False,
                 containers: bool = False) -> None:
        self.node = node
        self.s = settings
        self.source = source
        self.nc = nc
        self.outbox = outbox
        self.metrics = metrics
        self.user = user
        # As root with a uid range: every job its own account (the shared `user` still runs the probes).
        self.uids = UidPool.parse(settings.job_uids) if user.switches else None
        self.python = python
        self.python_has_pip = python_has_pip
        self.containers = containers
        self.work_dir = Path(settings.work_dir)
        self.store = JobStore(self.work_dir / "jobs.json", settings.job_history)
        self.jobs: dict[str, Job] = {}
        self.stopping = False
        self._persist_lock = asyncio.Lock()

    # --- start and stop ---------------------------------------------------------------------------------
    async def start(self) -> list[str]:
        """Load the state file and settle jobs left from a previous run; returns the job ids reported LOST."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work_dir, 0o711)  # job users must reach their own directory below, list nothing
        (self.work_dir / "jobs").mkdir(exist_ok=True)
        os.chmod(self.work_dir / "jobs", 0o711)
        if self.user.switches and (blocked := _unsearchable(self.work_dir, self.user)) is not None:
            log.error("the job user cannot reach the work dir: jobs will fail to start; make every parent "
                      "directory searchable (chmod o+x) or choose another AGENT_WORK_DIR",
                      extra={"work_dir": str(self.work_dir), "blocked_at": str(blocked), "job_user": self.user.name})
        await asyncio.to_thread(self.store.load)
        for key in sorted(self.store.unsent):  # outcomes a previous run could not deliver
            with contextlib.suppress(Exception):
                self._emit_state(JobStateEvent.model_validate(self.store.history[key]), key)
        lost = []
        for key, rec in list(self.store.running.items()):
            lost.append(rec["job_id"])
            await self._settle_orphan(key, rec)
        if lost:
            await self._persist()
        await asyncio.to_thread(self._prune_dirs)
        return lost

    async def _settle_orphan(self, key: str, rec: dict[str, Any]) -> None:
        pid = rec.get("pid")
        procs = await asyncio.to_thread(_orphan_processes, pid, rec.get("create_time"), rec["job_id"],
                                        rec.get("attempt", 1))
        if procs:
            await kill_group(pid or procs[0].pid, self.s.kill_grace_s, extra=procs)
            reason = ("agent restarted while the job ran: its processes were killed, since the agent cannot "
                      "follow a job it did not start; reported LOST so the orchestrator re-queues it")
        elif pid:
            reason = "agent restarted; the job's processes had already ended and their exit status is unknown"
        else:
            reason = "agent restarted before the job started"
        prev = JobState.RUNNING if pid or procs else JobState.SCHEDULED
        event = JobStateEvent(job_id=rec["job_id"], attempt=rec.get("attempt", 1), state=JobState.LOST, prev_state=prev,
                              time=utcnow(), source="agent", node=self.node, gpu_uuids=rec.get("gpu_uuids", []),
                              pid=pid, reason=reason, error=reason)
        log.warning("job orphaned by an agent restart reported LOST",
                    extra={"job_id": rec["job_id"], "attempt": rec.get("attempt"), "pid": pid, "killed": bool(procs)})
        self.store.finish(key, orjson.loads(event.to_bytes()))
        self._emit_state(event, key)

    async def shutdown(self, reason: str = "agent stopped") -> None:
        """Kill every running job (they cannot be supervised without the agent) and report them LOST."""
        self.stopping = True
        jobs = list(self.jobs.values())
        for job in jobs:
            self._stop(job, JobState.LOST, f"{reason}: the job's processes were killed; the orchestrator re-queues it")
        tasks = [j.task for j in jobs if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.s.kill_grace_s + 10)

    async def save(self) -> None:
        """Write the state file (after the outbox drained, so delivered outcomes are no longer marked unsent)."""
        await self._persist()

    def running_ids(self) -> list[str]:
        return sorted({j.cmd.job_id for j in self.jobs.values()})

    # --- commands ---------------------------------------------------------------------------------------
    async def on_dispatch(self, msg: Msg) -> None:
        try:
            cmd = decode(DispatchCommand, msg.data, msg.subject)
        except MalformedMessage as exc:
            await self._malformed(msg, "run", exc)
            return
        try:
            reply = await self.accept(cmd)
        except AgentError as exc:
            log.warning("dispatch refused", extra={"job_id": cmd.job_id, "code": exc.code, "error": exc.message})
            reply = CommandReply(ok=False, code=exc.code, message=exc.message, job_id=cmd.job_id)
        except Exception as exc:  # e.g. the disk is full: refuse clearly so the orchestrator places it elsewhere
            log.exception("dispatch failed", extra={"job_id": cmd.job_id})
            reply = CommandReply(ok=False, code="INTERNAL", message=f"agent could not accept the job: {exc!r}",
                                 job_id=cmd.job_id)
        await respond(msg, reply)

    async def accept(self, cmd: DispatchCommand) -> CommandReply:
        key = job_key(cmd.job_id, cmd.attempt)
        if key in self.jobs:
            self.metrics.duplicate_dispatches.inc()
            return CommandReply(ok=True, job_id=cmd.job_id, message="already running here; not started again")
        if key in self.store.history:
            self.metrics.duplicate_dispatches.inc()
            final = self.store.history[key]
            # The orchestrator may have missed the outcome: send it again (JetStream drops it if it was stored).
            with contextlib.suppress(Exception):
                self._emit_state(JobStateEvent.model_validate(final))
            return CommandReply(ok=True, job_id=cmd.job_id,
                                message=f"already ran here ({final.get('state')}); not started again")
        self._validate(cmd)
        workdir = job_dir(self.work_dir, cmd.job_id, cmd.attempt)
        user = self.uids.take({j.user.uid for j in self.jobs.values()}) if self.uids else self.user
        await asyncio.to_thread(prepare_dir, workdir, user)
        loop = asyncio.get_running_loop()
        job = Job(cmd=cmd, key=key, workdir=workdir, accepted_at=utcnow(), accepted_mono=loop.time(),
                  container=bool(cmd.spec.image), user=user)
        self.store.running[key] = {"job_id": cmd.job_id, "attempt": cmd.attempt, "gpu_uuids": cmd.gpu_uuids,
                                   "gpu_indices": cmd.gpu_indices, "accepted_at": job.accepted_at.isoformat(),
                                   "pid": None, "create_time": None}
        await self._persist()  # before the reply: an accepted job is never forgotten, even by a crash
        self.jobs[key] = job
        job.timer = loop.call_later(cmd.spec.max_duration_s, self._stop, job, JobState.TIMED_OUT,
                                    f"exceeded max_duration_s={cmd.spec.max_duration_s}")
        job.task = asyncio.create_task(self._lifecycle(job), name=f"job-{key}")
        self.metrics.jobs_running.set(len(self.jobs))
        log.info("job accepted", extra={"job_id": cmd.job_id, "attempt": cmd.attempt, "gpus": cmd.gpu_indices})
        return CommandReply(ok=True, job_id=cmd.job_id, message="accepted")

    def _validate(self, cmd: DispatchCommand) -> None:
        if self.stopping:
            raise JobRejected("the agent is stopping", job_id=cmd.job_id, code="AGENT_STOPPING")
        if not JOB_ID_RE.match(cmd.job_id):
            raise JobRejected(f"job id must match {JOB_ID_RE.pattern}", job_id=cmd.job_id)
        others = [j for j in self.jobs.values() if j.cmd.job_id == cmd.job_id]
        if others:
            raise JobConflict(f"attempt {others[0].cmd.attempt} of this job still runs here; cancel it first",
                              job_id=cmd.job_id)
        inv = {g.index: g for g in self.source.inventory()}
        if not cmd.gpu_indices or len(set(cmd.gpu_indices)) != len(cmd.gpu_indices):
            raise JobRejected("gpu_indices must list distinct GPUs", job_id=cmd.job_id, field="gpu_indices")
        for n, i in enumerate(cmd.gpu_indices):
            if i not in inv:
                raise JobRejected(f"GPU index {i} does not exist on {self.node}", job_id=cmd.job_id,
                                  field="gpu_indices")
            if cmd.gpu_uuids and (n >= len(cmd.gpu_uuids) or cmd.gpu_uuids[n] != inv[i].uuid):
                raise JobRejected(f"GPU {i} of {self.node} is {inv[i].uuid}, not the GPU the job was placed on",
                                  job_id=cmd.job_id, field="gpu_uuids")
            if not inv[i].healthy:
                raise JobRejected(f"GPU {i} of {self.node} is unhealthy", job_id=cmd.job_id, field="gpu_indices")
        if cmd.spec.image:
            if not self.containers:
                raise JobRejected("this node has no Docker engine with the NVIDIA runtime for `image` jobs",
                                  job_id=cmd.job_id, field="image")
            if cmd.spec.requirements:
                raise JobRejected("`requirements` cannot be combined with `image`: install them in the image",
                                  job_id=cmd.job_id, field="requirements")
        elif (cmd.spec.script or cmd.spec.requirements) and not self.python:
            raise JobRejected("no Python on this node that the job user may run", job_id=cmd.job_id)

    async def on_cancel(self, msg: Msg) -> None:
        try:
            cmd = decode(CancelCommand, msg.data, msg.subject)
        except MalformedMessage as exc:
            await self._malformed(msg, "cancel", exc)
            return
        try:
            reply = self.cancel(cmd.job_id, cmd.reason)
        except AgentError as exc:
            reply = CommandReply(ok=False, code=exc.code, message=exc.message, job_id=cmd.job_id)
        await respond(msg, reply)

    def cancel(self, job_id: str, reason: str) -> CommandReply:
        jobs = [j for j in self.jobs.values() if j.cmd.job_id == job_id]
        for job in jobs:
            self._stop(job, JobState.CANCELLED, reason)
        if jobs:
            return CommandReply(ok=True, job_id=job_id, message="cancelling: its process group is being killed")
        finished = [v for v in self.store.history.values() if v.get("job_id") == job_id]
        if finished:
            return CommandReply(ok=True, job_id=job_id, message=f"already ended ({finished[-1].get('state')})")
        raise JobNotFound(f"job {job_id} is not known on {self.node}", job_id=job_id)

    async def _malformed(self, msg: Msg, verb: str, exc: MalformedMessage) -> None:
        self.metrics.malformed.labels(verb).inc()
        log.warning("malformed command dead-lettered", extra={"subject": msg.subject, "error": exc.message})
        await dead_letter(self.nc, "agent", msg.subject, msg.data, exc.message)
        await respond(msg, CommandReply(ok=False, code=exc.code, message=exc.message))

    # --- one job ----------------------------------------------------------------------------------------
    def _stop(self, job: Job, state: JobState, reason: str) -> None:
        """Timeout, cancel or shutdown: remember why, kill what runs now (the lifecycle reports the outcome)."""
        if job.stop_state is not None:
            return
        if job.state is JobState.RUNNING and job.proc is not None and job.proc.returncode is not None:
            return  # it ended by itself a moment ago: its own outcome stands
        job.stop_state, job.stop_reason = state, reason
        log.info("stopping job", extra={"job_id": job.cmd.job_id, "to": state.value, "reason": reason})
        self._kill_current(job)

    def _kill_current(self, job: Job) -> None:
        proc = job.proc
        if proc is None or proc.returncode is not None or job.kill_task is not None:
            return
        job.kill_task = asyncio.create_task(self._kill(job, proc))

    async def _kill(self, job: Job, proc: asyncio.subprocess.Process) -> None:
        if job.container:
            await container.kill(job.cmd)
        await kill_group(proc.pid, self.s.kill_grace_s, leader_wait=proc.wait)

    async def _lifecycle(self, job: Job) -> None:
        rc: int | None = None
        error: str | None = None
        try:
            argv, env = await self._prepare(job)
            if job.stop_state is None:
                await self._start(job, argv, env)
                rc = await self._supervise(job)
        except (SetupFailed, OSError) as exc:
            error = exc.message if isinstance(exc, SetupFailed) else f"cannot start the job: {exc}"
        except Exception as exc:  # the agent's own bug must end the job cleanly, not leave it running
            log.exception("job failed inside the agent", extra={"job_id": job.cmd.job_id})
            error = f"agent error: {exc!r}"
        finally:
            if job.proc is not None and job.proc.returncode is None:  # never leave a job running unsupervised
                with contextlib.suppress(Exception):
                    await self._kill(job, job.proc)
            if job.timer is not None:
                job.timer.cancel()
            self.source.detach_job(job.key)
        if job.user.switches and job.user is not self.user:
            # Its uid goes back to the pool: its directory (kept a while for inspection) goes back to the agent,
            # so a later job given the same uid cannot enter it.
            with contextlib.suppress(OSError):
                os.chown(job.workdir, os.geteuid(), os.getegid())
        event = self._final_event(job, rc, error)
        job.state = event.state
        self.jobs.pop(job.key, None)
        self.store.finish(job.key, orjson.loads(event.to_bytes()))
        self._emit_state(event, job.key)
        self.metrics.jobs_running.set(len(self.jobs))
        self.metrics.jobs_finished.labels(event.state.value).inc()
        log.info("job ended", extra={"job_id": job.cmd.job_id, "attempt": job.cmd.attempt, "state": event.state.value,
                                     "exit_code": event.exit_code, "duration_s": event.duration_s})
        try:
            await self._persist()
        except OSError:
            log.exception("job state file not written", extra={"job_id": job.cmd.job_id})
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._prune_dirs)

    async def _prepare(self, job: Job) -> tuple[list[str], dict[str, str]]:
        spec, wd = job.cmd.spec, job.workdir
        python = self.python or "python3"
        extra_path = [os.path.dirname(python)] if self.python else []
        if spec.requirements:
            venv = wd / ".venv"
            extra_path = [str(venv / "bin")]
            env = self._env(job, extra_path)
            self._system_line(job, f"creating a virtual environment for {len(spec.requirements)} requirement(s)")
            # With pip in the system site-packages the venv needs no copy of its own (seconds saved per job).
            no_pip = ["--without-pip"] if self.python_has_pip else []
            rc = await self._setup_step(job, [python, "-m", "venv", "--system-site-packages", *no_pip, str(venv)],
                                        env)
            if rc is None:
                return [], env
            if rc != 0:
                raise SetupFailed(f"creating the job's virtual environment failed (exit code {rc})")
            rc = await self._setup_step(job, [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
                                              "--disable-pip-version-check", "--", *spec.requirements], env)
            if rc is None:
                return [], env
            if rc != 0:
                raise SetupFailed(f"installing requirements failed (pip exit code {rc})")
            python = str(venv / "bin" / "python")
        env = self._env(job, extra_path)
        if spec.script is not None:
            script = wd / "job.py"
            await asyncio.to_thread(self._write_script, script, spec.script, job.user)
            argv = ["python" if job.container else python, script.name]
        else:
            argv = list(spec.command or [])
        if job.container:
            argv, env = container.wrap(job.cmd, argv, env, wd, job.user)
        return argv, env

    def _write_script(self, path: Path, text: str, user: JobUser) -> None:
        path.write_text(text)
        os.chmod(path, 0o600)
        if user.switches:
            os.chown(path, user.uid, user.gid)

    def _env(self, job: Job, extra_path: list[str]) -> dict[str, str]:
        return build_env(job.cmd, workdir=job.workdir, user=job.user, passthrough=self.s.job_env_passthrough,
                         extra_path=extra_path)

    async def _setup_step(self, job: Job, argv: list[str], env: dict[str, str]) -> int | None:
        """Run a setup command (venv, pip) as the job user; its output goes to the log as `system` lines.
        None when the job was stopped meanwhile."""
        if job.stop_state is not None:
            return None
        proc = await spawn(argv, env=env, cwd=job.workdir, user=job.user)
        job.proc = job_proc = proc
        if job.stop_state is not None:
            self._kill_current(job)
        readers = [asyncio.create_task(read_lines(proc.stdout, lambda ln: self._log(job, "system", ln))),
                   asyncio.create_task(read_lines(proc.stderr, lambda ln: self._log(job, "system", ln)))]
        rc = await proc.wait()
        await self._finish_group(job, job_proc, readers)
        job.proc, job.kill_task = None, None
        return None if job.stop_state is not None else rc

    async def _start(self, job: Job, argv: list[str], env: dict[str, str]) -> None:
        if job.container:
            proc = await spawn(argv, env=env, cwd=job.workdir, user=JobUser(None, None, None))
        else:
            proc = await spawn(argv, env=env, cwd=job.workdir, user=job.user)
        loop = asyncio.get_running_loop()
        job.proc, job.pid = proc, proc.pid
        job.started_at, job.started_mono = utcnow(), loop.time()
        job.state = JobState.RUNNING
        if job.stop_state is not None:  # stopped while the process was being created
            self._kill_current(job)
        spec = job.cmd.spec
        self.source.attach_job(job.key, job.cmd.gpu_indices,
                               workload_for(spec.job_type, spec.gpu_mem_mb, spec.expected_util_pct), proc.pid)
        self._emit_state(JobStateEvent(
            job_id=job.cmd.job_id, attempt=job.cmd.attempt, state=JobState.RUNNING, prev_state=JobState.SCHEDULED,
            time=job.started_at, source="agent", node=self.node, gpu_uuids=job.cmd.gpu_uuids, pid=proc.pid,
            duration_s=round(job.started_mono - job.accepted_mono, 6)))
        rec = self.store.running.get(job.key)
        if rec is not None:
            rec["pid"] = proc.pid
            with contextlib.suppress(psutil.Error):
                rec["create_time"] = psutil.Process(proc.pid).create_time()
            try:
                await self._persist()
            except OSError:  # a restart still finds the job by its AETHER_JOB_ID
                log.exception("job state file not written", extra={"job_id": job.cmd.job_id})

    async def _supervise(self, job: Job) -> int:
        proc = job.proc
        assert proc is not None

        def out(line: str) -> None:
            if line.strip():
                job.last_stdout = line
            self._log(job, "stdout", line)

        def err(line: str) -> None:
            if line.strip():
                job.last_stderr = line
            self._log(job, "stderr", line)

        readers = [asyncio.create_task(read_lines(proc.stdout, out)),
                   asyncio.create_task(read_lines(proc.stderr, err))]
        rc = await proc.wait()
        await self._finish_group(job, proc, readers)
        return rc

    async def _finish_group(self, job: Job, proc: asyncio.subprocess.Process, readers: list[asyncio.Task]) -> None:
        """After the leader exits: end what it left running in its group (it would hold the GPU and our pipes),
        then drain the output."""
        if job.kill_task is not None:
            await job.kill_task
        elif group_alive(proc.pid):
            await kill_group(proc.pid, LEFTOVER_GRACE_S, leader_wait=proc.wait)
        done, pending = await asyncio.wait(readers, timeout=READER_DRAIN_S)
        for t in pending:
            t.cancel()

    def _final_event(self, job: Job, rc: int | None, error: str | None) -> JobStateEvent:
        now = utcnow()
        loop = asyncio.get_running_loop()
        started = job.started_mono is not None
        prev = JobState.RUNNING if started else JobState.SCHEDULED
        duration = loop.time() - (job.started_mono if started else job.accepted_mono)
        exit_code = None if rc is None else (rc if rc >= 0 else 128 - rc)
        result = None
        reason = None
        if job.stop_state is not None:
            state, reason = job.stop_state, job.stop_reason
            error = error or reason
        elif error is not None:
            state = JobState.FAILED
        elif rc == 0:
            state = JobState.SUCCEEDED
            result = _result_of(job.last_stdout)
        else:
            state = JobState.FAILED
            error = _exit_text(rc) + (f": {job.last_stderr[:1000]}" if job.last_stderr else "")
        return JobStateEvent(job_id=job.cmd.job_id, attempt=job.cmd.attempt, state=state, prev_state=prev, time=now,
                             source="agent", node=self.node, gpu_uuids=job.cmd.gpu_uuids, exit_code=exit_code,
                             result=result, error=error, reason=reason, duration_s=round(duration, 6), pid=job.pid)

    # --- reporting --------------------------------------------------------------------------------------
    def _log(self, job: Job, stream: str, line: str) -> None:
        seq = job.seq
        job.seq += 1
        msg = JobLogLine(job_id=job.cmd.job_id, attempt=job.cmd.attempt, seq=seq, stream=stream, line=line,
                         time=utcnow())
        self.outbox.put(Item(subjects.job_log(job.cmd.job_id, self.node), msg.to_bytes(),
                             f"{job.cmd.job_id}.{job.cmd.attempt}.log.{seq}", droppable=True, batchable=True))
        self.metrics.job_log_lines.inc()

    def _system_line(self, job: Job, text: str) -> None:
        self._log(job, "system", text)

    def _emit_state(self, event: JobStateEvent, final_key: str | None = None) -> None:
        # State changes are never dropped from the buffer; the id makes a re-sent one a no-op in JetStream.
        # A final state stays marked unsent in the state file until stored, and is sent again after a restart.
        on_stored = (lambda: self.store.unsent.discard(final_key)) if final_key else None
        self.outbox.put(Item(subjects.job_report(event.job_id, self.node), event.to_bytes(),
                             f"{event.job_id}.{event.attempt}.state.{event.state.value}", droppable=False,
                             on_stored=on_stored))

    async def _persist(self) -> None:
        async with self._persist_lock:
            await asyncio.to_thread(self.store.write, self.store.snapshot())

    def _prune_dirs(self) -> None:
        """Working directories of jobs that ended more than `keep_job_dirs_s` ago are removed."""
        root = self.work_dir / "jobs"
        cutoff = time.time() - self.s.keep_job_dirs_s
        active = {j.workdir.name for j in self.jobs.values()}
        for path in root.iterdir() if root.exists() else ():
            try:
                if path.name not in active and path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue


async def respond(msg: Msg, reply: CommandReply) -> None:
    if msg.reply:
        with contextlib.suppress(Exception):  # the requester may have given up; the outcome is on the bus anyway
            await msg.respond(reply.to_bytes())


def _result_of(line: str) -> Any:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"killed by {name}"
    return f"exited with code {rc}"


def _orphan_processes(pid: int | None, create_time: float | None, job_id: str, attempt: int) -> list[psutil.Process]:
    """Processes a previous agent left of a job: its leader if still the same process (not a reused pid), what is
    still in its process group, and anything carrying its AETHER_JOB_ID / AETHER_JOB_ATTEMPT in its environment
    (this also finds a job whose pid the agent had no time to record). Blocking: call from a thread."""
    found: dict[int, psutil.Process] = {}
    if pid:
        try:
            leader = psutil.Process(pid)
            if create_time is None or abs(leader.create_time() - create_time) < 0.05:
                found[pid] = leader
        except psutil.Error:
            pass
    me = os.getpid()
    for p in psutil.process_iter(["pid", "create_time"]):
        if p.pid == me or p.pid in found:
            continue
        try:
            if pid and create_time and os.getpgid(p.pid) == pid and p.info["create_time"] >= create_time - 0.05:
                found[p.pid] = p
                continue
            env = p.environ()
            if env.get("AETHER_JOB_ID") == job_id and env.get("AETHER_JOB_ATTEMPT") == str(attempt):
                found[p.pid] = p
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return list(found.values())


def _unsearchable(path: Path, user: JobUser) -> Path | None:
    """The first directory on the way to `path` that `user` may not enter, or None."""
    for d in [*reversed(path.resolve().parents), path.resolve()]:
        try:
            st = d.stat()
        except OSError:
            return d
        if st.st_uid == user.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return d
    return None
