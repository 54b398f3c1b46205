"""NATS subject names and JetStream stream names: the bus half of the contract."""

from __future__ import annotations

import re

PREFIX = "aether"

TELEMETRY_STREAM = "AETHER_TELEMETRY"
TELEMETRY_ALL = f"{PREFIX}.telemetry.*"
HEARTBEAT_ALL = f"{PREFIX}.heartbeat.*"
JOB_STATE_ALL = f"{PREFIX}.jobs.*.state"
JOB_LOG_ALL = f"{PREFIX}.jobs.*.log"
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
    return f"{PREFIX}.jobs.{job_id}.state"


def job_log(job_id: str) -> str:
    return f"{PREFIX}.jobs.{job_id}.log"


def alert(severity: str, node: str) -> str:
    return f"{PREFIX}.alerts.{severity}.{check_node(node)}"


def node_of(subject: str) -> str | None:
    """The node token of a telemetry/heartbeat subject, or None if the subject is not one."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == PREFIX and parts[1] in ("telemetry", "heartbeat"):
        return parts[2]
    return None
