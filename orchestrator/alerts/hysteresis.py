"""Open/resolve hysteresis: a condition opens an alert after holding `for_s`, and resolves it after being gone for
`clear_for_s`; rules pass a looser threshold while open, so a value hovering at the threshold cannot flap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.schemas.alerts import Alert, AlertSeverity, AlertState


@dataclass(slots=True)
class AlertRecord:
    """One alert as the engine holds it; `id` is filled in once the store has written it."""

    rule: str
    severity: AlertSeverity
    node: str
    gpu_uuid: str | None
    metric: str | None
    value: float | None
    threshold: float | None
    message: str
    opened_at: datetime
    id: int | None = None
    state: AlertState = AlertState.OPEN
    resolved_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None

    @property
    def key(self) -> str:
        return alert_key(self.rule, self.node, self.gpu_uuid, self.metric)

    @property
    def name(self) -> str:
        return tracker_name(self.rule, self.metric)

    def to_model(self) -> Alert:
        return Alert(id=self.id, rule=self.rule, severity=self.severity, state=self.state, node=self.node,
                     gpu_uuid=self.gpu_uuid, metric=self.metric, value=self.value, threshold=self.threshold,
                     message=self.message[:1024], opened_at=self.opened_at, resolved_at=self.resolved_at,
                     acknowledged_at=self.acknowledged_at, acknowledged_by=self.acknowledged_by)


def alert_key(rule: str, node: str, gpu_uuid: str | None, metric: str | None) -> str:
    """What makes two alerts the same alert: at most one open per key (a unique index in the store)."""
    return f"{rule}|{node}|{gpu_uuid or ''}|{metric or ''}"


def tracker_name(rule: str, metric: str | None) -> str:
    # Rules with one alert per metric (the anomaly detector) track each metric on its own.
    return f"{rule}:{metric}" if rule == "anomaly" and metric else rule


def ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class Tracker:
    """The life of one condition on one subject (GPU or node): pending, open, clearing."""

    __slots__ = ("active_since", "clear_since", "threshold", "value")

    def __init__(self) -> None:
        self.active_since: float | None = None
        self.clear_since: float | None = None
        self.value: float | None = None
        self.threshold: float | None = None


class Watch:
    """Everything the engine knows about one subject: its trackers and its open alerts by tracker name."""

    __slots__ = ("gpu_uuid", "node", "open", "state", "trackers")

    def __init__(self, node: str, gpu_uuid: str | None) -> None:
        self.node = node
        self.gpu_uuid = gpu_uuid
        self.trackers: dict[str, Tracker] = {}
        self.open: dict[str, AlertRecord] = {}
        self.state: dict[str, object] = {}  # per-rule memory (last counters, detectors)


def step(w: Watch, name: str, active: bool, t: float, for_s: float, clear_for_s: float,
         value: float | None = None, threshold: float | None = None) -> str | None:
    """Advance the condition `name` of `w` to time `t`. Returns "open" when the alert must open now (the
    caller builds the record), "resolve" when it must resolve (resolved at `clear_since`), else None."""
    tr = w.trackers.get(name)
    if active:
        if tr is None:
            tr = w.trackers[name] = Tracker()
        tr.clear_since = None
        if name in w.open:
            return None
        if tr.active_since is None:
            tr.active_since = t
        tr.value, tr.threshold = value, threshold
        return "open" if t - tr.active_since >= for_s else None
    if tr is None:
        return None
    tr.active_since = None
    if name not in w.open:
        del w.trackers[name]  # nothing pending, nothing open: keep no state for a quiet condition
        return None
    if tr.clear_since is None:
        tr.clear_since = t
    return "resolve" if t - tr.clear_since >= clear_for_s else None
