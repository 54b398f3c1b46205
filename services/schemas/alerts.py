"""Alerts on `aether.alerts.<severity>.<node>`: opened once, resolved once, acknowledgeable."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from services.schemas.base import BusMessage, UtcDatetime


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class Alert(BusMessage):
    v: Literal[1] = 1
    id: int | None = None
    rule: str
    severity: AlertSeverity
    state: AlertState = AlertState.OPEN
    node: str
    gpu_uuid: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    message: str = Field(max_length=1024)
    opened_at: UtcDatetime
    resolved_at: UtcDatetime | None = None
    acknowledged_at: UtcDatetime | None = None
    acknowledged_by: str | None = None
