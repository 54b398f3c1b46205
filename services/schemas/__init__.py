"""The message contract: one pydantic model per NATS subject family and HTTP body, each versioned by `v`."""

from services.schemas.alerts import Alert, AlertSeverity, AlertState
from services.schemas.base import BusMessage, StrictBody
from services.schemas.faults import FaultCommand, FaultKind
from services.schemas.heartbeat import GpuInventory, Heartbeat
from services.schemas.jobs import (
    FINAL_STATES,
    CancelCommand,
    CommandReply,
    DispatchCommand,
    JobLogLine,
    JobSpec,
    JobState,
    JobStateEvent,
    JobSubmitted,
    SchedulerHint,
)
from services.schemas.placement import (
    Candidate,
    FeatureContribution,
    JobFeatures,
    ModelUpdated,
    PlacementDecision,
    PlacementRequest,
)
from services.schemas.telemetry import GpuProcess, TelemetryBatch, TelemetrySample

__all__ = [
    "FINAL_STATES",
    "Alert",
    "AlertSeverity",
    "AlertState",
    "BusMessage",
    "CancelCommand",
    "Candidate",
    "CommandReply",
    "DispatchCommand",
    "FaultCommand",
    "FaultKind",
    "FeatureContribution",
    "GpuInventory",
    "GpuProcess",
    "Heartbeat",
    "JobFeatures",
    "JobLogLine",
    "JobSpec",
    "JobState",
    "JobStateEvent",
    "JobSubmitted",
    "ModelUpdated",
    "PlacementDecision",
    "PlacementRequest",
    "SchedulerHint",
    "StrictBody",
    "TelemetryBatch",
    "TelemetrySample",
]
