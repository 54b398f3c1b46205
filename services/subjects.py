"""NATS subject names and JetStream stream names: the bus half of the contract."""

from __future__ import annotations

import re

PREFIX = "aether"

TELEMETRY_STREAM = "AETHER_TELEMETRY"
TELEMETRY_ALL = f"{PREFIX}.telemetry.*"
HEARTBEAT_ALL = f"{PREFIX}.heartbeat.*"
# Job subjects. The orchestrator publishes a job's transitions on `aether.jobs.<id>.state`; an agent reports on
# subjects that end with its node (`aether.jobs.<id>.state.<node>`, `aether.jobs.<id>.log.<node>`), which its
# NATS account alone may publish on, so no node can report on another node's job.
JOB_STATE_ALL = f"{PREFIX}.jobs.*.state"
JOB_REPORT_ALL = f"{PREFIX}.jobs.*.state.*"
JOB_LOG_ALL = f"{PREFIX}.jobs.*.log.*"
# What the scheduler's leader must hear of from other replicas (a job stored queued, a queued job cancelled), kept in
# the jobs stream so a leader that starts later still hears it. The transitions above are live only (PostgreSQL
# keeps their history).
SCHEDULER_HINT_ALL = f"{PREFIX}.scheduler.hint.*"
ALERTS_ALL = f"{PREFIX}.alerts.>"
PLACEMENT = f"{PREFIX}.placement"
CLUSTER = f"{PREFIX}.cluster"
MODEL_UPDATED = f"{PREFIX}.model.updated"
DEADLETTER_TELEMETRY = f"{PREFIX}.deadletter.telemetry"
DEADLETTER_PREFIX = f"{PREFIX}.deadletter"

# Node names become subject tokens: keep them to characters that cannot break a subject.
NODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_node(node: str) -> str:
    if not NODE_RE.match(node):
        raise ValueError(f"node name {node!r} must match {NODE_RE.pattern}")
    return node


def telemetry(node: str) -> str:
    return f"{PREFIX}.telemetry.{check_node(node)}"


def heartbeat(node: str) -> str:
    return f"{PREFIX}.heartbeat.{check_node(node)}"


def cmd(node: str, verb: str) -> str:
    """Commands to one node's agent: verbs `run`, `cancel`, `fault`, `reconcile`."""
    return f"{PREFIX}.cmd.{check_node(node)}.{verb}"


def cmd_all(node: str) -> str:
    return f"{PREFIX}.cmd.{check_node(node)}.*"


def job_state(job_id: str) -> str:
    """The orchestrator's transitions of one job."""
    return f"{PREFIX}.jobs.{job_id}.state"


def scheduler_hint(job_id: str) -> str:
    return f"{PREFIX}.scheduler.hint.{job_id}"


def job_report(job_id: str, node: str) -> str:
    """An agent's state report (RUNNING, final) on one job."""
    return f"{PREFIX}.jobs.{job_id}.state.{check_node(node)}"


def job_log(job_id: str, node: str) -> str:
    """One line of a job's output, from the agent of `node`."""
    return f"{PREFIX}.jobs.{job_id}.log.{check_node(node)}"


def job_reports(job_id: str) -> str:
    """Every agent's state reports on one job."""
    return f"{PREFIX}.jobs.{job_id}.state.*"


def job_logs(job_id: str) -> str:
    return f"{PREFIX}.jobs.{job_id}.log.*"


def job_all(job_id: str) -> str:
    """Everything about one job: the orchestrator's transitions, agents' reports and output."""
    return f"{PREFIX}.jobs.{job_id}.>"


def agent_job_subjects(node: str) -> list[str]:
    """What the agent of `node` may publish about jobs (its NATS permissions)."""
    return [f"{PREFIX}.jobs.*.state.{check_node(node)}", f"{PREFIX}.jobs.*.log.{node}"]


def job_subject_parts(subject: str) -> tuple[str, str, str | None] | None:
    """(job id, 'state'|'log', reporting node or None for the orchestrator's own) of a job subject; None if
    the subject is not one."""
    parts = subject.split(".")
    if len(parts) not in (4, 5) or parts[0] != PREFIX or parts[1] != "jobs" or parts[3] not in ("state", "log"):
        return None
    return parts[2], parts[3], parts[4] if len(parts) == 5 else None


def alert(severity: str, node: str) -> str:
    return f"{PREFIX}.alerts.{severity}.{check_node(node)}"


def node_of(subject: str) -> str | None:
    """The node token of a telemetry/heartbeat subject, or None if the subject is not one."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == PREFIX and parts[1] in ("telemetry", "heartbeat"):
        return parts[2]
    return None
