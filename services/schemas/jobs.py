"""Jobs: the HTTP job spec, states on `aether.jobs.<id>.state`, logs on `aether.jobs.<id>.log`, agent commands."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from services.schemas.base import BusMessage, StrictBody, UtcDatetime


class JobState(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    LOST = "LOST"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})

# Allowed transitions. LOST is final for an attempt; the orchestrator re-queues (LOST -> PENDING) up to a
# retry limit, so LOST is not in FINAL_STATES.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SCHEDULED, JobState.CANCELLED, JobState.FAILED}),
    JobState.SCHEDULED: frozenset({JobState.RUNNING, JobState.PENDING, JobState.CANCELLED, JobState.FAILED,
                                   JobState.LOST, JobState.SUCCEEDED, JobState.TIMED_OUT}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT,
                                 JobState.LOST}),
    JobState.LOST: frozenset({JobState.PENDING, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}

JobType = Literal["training", "inference", "batch", "interactive"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# The agent sets these itself; a job may not override them.
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "AETHER_JOB_ID", "LD_PRELOAD",
                          "LD_LIBRARY_PATH", "PYTHONPATH", "PATH", "HOME"})
MAX_ENV_BYTES = 32 * 1024
MAX_SCRIPT_BYTES = 256 * 1024
MAX_DURATION_S = 7 * 24 * 3600


class JobSpec(StrictBody):
    """POST /v1/jobs body. Exactly one of `command` (argv) or `script` (Python source)."""

    v: Literal[1] = 1
    name: str = Field(description="letters, digits, '.', '_' and '-'; starts with a letter or digit")
    command: list[str] | None = Field(default=None, min_length=1, max_length=256)
    script: str | None = Field(default=None, min_length=1, max_length=MAX_SCRIPT_BYTES)
    requirements: list[str] = Field(default_factory=list, max_length=64)
    gpus: int = Field(default=1, ge=1, le=16)
    gpu_mem_mb: int = Field(default=1024, ge=0, le=1_048_576)
    max_duration_s: int = Field(default=3600, ge=1, le=MAX_DURATION_S)
    job_type: JobType = "batch"
    model: str | None = Field(default=None, min_length=1, max_length=128)
    tenant: str | None = Field(default=None, description="defaults to the token's tenant")
    priority: int = Field(default=0, ge=-100, le=100)
    env: dict[str, str] = Field(default_factory=dict, max_length=128)
    image: str | None = Field(default=None, min_length=1, max_length=256)
    expected_util_pct: float | None = Field(default=None, ge=0, le=100,
                                            description="hint for placement and the simulator")
    deferrable: bool = Field(default=False, description="may wait for a low-carbon window until `deadline`")
    deadline: UtcDatetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v) or ".." in v:
            raise ValueError("name must be 1-128 of letters, digits, '.', '_', '-', start alphanumeric, no '..'")
        return v

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        if v is not None and not TENANT_RE.match(v):
            raise ValueError("tenant must be 1-64 of lowercase letters, digits, '_', '-'")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for arg in v:
                if len(arg) > 4096 or "\x00" in arg:
                    raise ValueError("each argument must be under 4096 characters without NUL bytes")
            if not v[0].strip():
                raise ValueError("the program (first argument) must not be empty")
        return v

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, v: list[str]) -> list[str]:
        for line in v:
            # pip options (-r, --index-url, -e ...) could fetch from anywhere or read local files.
            if not line.strip() or line.lstrip().startswith("-") or len(line) > 256 or "\n" in line or "\x00" in line:
                raise ValueError(f"requirement {line!r} must be a plain requirement specifier")
        return v

    @field_validator("model", "image", "script")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        # PostgreSQL text and jsonb cannot hold NUL: refuse it here, naming the field, not as a failed insert.
        if v is not None and "\x00" in v:
            raise ValueError("must not contain NUL bytes")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        size = 0
        for key, val in v.items():
            if not ENV_KEY_RE.match(key):
                raise ValueError(f"env key {key!r} is not a valid variable name")
            if key in RESERVED_ENV or key.startswith(("AETHER_", "NATS_")):
                raise ValueError(f"env key {key!r} is reserved")
            if "\x00" in val:
                raise ValueError(f"env value of {key!r} contains a NUL byte")
            size += len(key) + len(val)
        if size > MAX_ENV_BYTES:
            raise ValueError(f"env is {size} bytes, over the {MAX_ENV_BYTES} byte limit")
        return v

    @model_validator(mode="after")
    def _one_program(self) -> JobSpec:
        if (self.command is None) == (self.script is None):
            raise ValueError("give exactly one of `command` (argv list) or `script` (Python source)")
        if self.deadline is not None and not self.deferrable:
            raise ValueError("`deadline` is only meaningful with `deferrable: true`")
        return self


class JobSubmitted(BusMessage):
    """201 answer of POST /v1/jobs."""

    job_id: str
    state: JobState


class JobStateEvent(BusMessage):
    """A transition of one job. The orchestrator publishes its own on `aether.jobs.<id>.state`; the agent of a node
    reports RUNNING and final states on `aether.jobs.<id>.state.<node>` (`node` must match). `source` says which."""

    v: Literal[1] = 1
    job_id: str
    state: JobState
    prev_state: JobState | None = None
    time: UtcDatetime
    source: Literal["orchestrator", "agent"] = "orchestrator"
    attempt: int = Field(default=1, ge=1)
    node: str | None = None
    gpu_uuids: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    result: Any = None
    error: str | None = None
    reason: str | None = None
    duration_s: float | None = Field(default=None, description="time spent in prev_state")
    pid: int | None = None


class SchedulerHint(BusMessage):
    """On `aether.scheduler.hint.<id>`, from the orchestrator replica that did it: a job was stored queued
    (`PENDING`), or a queued job ended (cancelled), so the scheduler's leader queues it or drops it."""

    v: Literal[1] = 1
    job_id: str
    state: JobState
    time: UtcDatetime
    replica: str | None = None


class JobLogLine(BusMessage):
    """One line of a job's output, on `aether.jobs.<id>.log.<node>` (from the agent running it)."""

    v: Literal[1] = 1
    job_id: str
    attempt: int = 1
    seq: int = Field(ge=0)
    stream: Literal["stdout", "stderr", "system"]
    line: str = Field(max_length=65536)
    time: UtcDatetime


class DispatchCommand(BusMessage):
    """Request on `aether.cmd.<node>.run`; the agent answers a CommandReply once it has accepted the job."""

    v: Literal[1] = 1
    job_id: str
    attempt: int = Field(default=1, ge=1)
    spec: JobSpec
    gpu_indices: list[int]
    gpu_uuids: list[str]


class CancelCommand(BusMessage):
    """Request on `aether.cmd.<node>.cancel`."""

    v: Literal[1] = 1
    job_id: str
    reason: str = "cancelled"


class CommandReply(BusMessage):
    """Reply of an agent to any `aether.cmd.<node>.*` request."""

    v: Literal[1] = 1
    ok: bool
    code: str | None = None
    message: str | None = None
    job_id: str | None = None
