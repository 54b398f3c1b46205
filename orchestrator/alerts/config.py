"""Alert settings (YAML `orchestrator.alerts`): one model per rule, every threshold and duration with a default.

Durations of sample rules are measured on the samples' own timestamps, so a replay after a restart or a lagging
ingest judges "for 30 s" the same way the GPU lived it; staleness is measured on the orchestrator's clock.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.schemas.alerts import AlertSeverity

Direction = Literal["high", "low", "both"]
AnomalyMetric = Literal["temp_c", "power_w", "sm_clock_mhz", "fan_pct", "mem_temp_c", "util_mem_pct", "mem_used_mb",
                        "pcie_rx_kbps", "pcie_tx_kbps"]


class _Model(BaseModel):
    # A misspelt key in YAML must stop the service, not be ignored.
    model_config = ConfigDict(extra="forbid")


class RuleBase(_Model):
    enabled: bool = True
    severity: AlertSeverity = AlertSeverity.WARNING
    for_s: float = Field(30.0, ge=0, le=7 * 86400, description="condition must hold this long to open")
    clear_for_s: float = Field(30.0, ge=0, le=7 * 86400, description="condition must be gone this long to resolve")


class TemperatureRule(RuleBase):
    threshold_c: float = Field(85.0, gt=0, lt=200)
    clear_margin_c: float = Field(5.0, ge=0, le=50, description="resolves below threshold_c - clear_margin_c")


class MemoryRule(RuleBase):
    for_s: float = Field(60.0, ge=0, le=7 * 86400)
    threshold_pct: float = Field(95.0, gt=0, le=100)
    clear_pct: float = Field(90.0, gt=0, le=100)

    @model_validator(mode="after")
    def _order(self) -> MemoryRule:
        if self.clear_pct > self.threshold_pct:
            raise ValueError("clear_pct must not exceed threshold_pct")
        return self


class ThermalThrottleRule(RuleBase):
    for_s: float = Field(60.0, ge=0, le=7 * 86400)
    reasons: list[str] = Field(default_factory=lambda: ["sw_thermal", "hw_thermal"], min_length=1)


class PowerThrottleRule(RuleBase):
    # power_cap is what any busy GPU at its limit shows (see power_at_limit); the power brake is a facility or
    # PSU signal slowing the board from outside.
    for_s: float = Field(30.0, ge=0, le=7 * 86400)
    reasons: list[str] = Field(default_factory=lambda: ["hw_power_brake"], min_length=1)


class PowerLimitRule(RuleBase):
    """Drawing at (nearly) the power limit is normal for heavy training: info, and only when sustained."""

    severity: AlertSeverity = AlertSeverity.INFO
    for_s: float = Field(300.0, ge=0, le=7 * 86400)
    threshold_ratio: float = Field(0.98, gt=0, le=1.5, description="power_w / power_limit_w that counts as at limit")
    clear_ratio: float = Field(0.93, gt=0, le=1.5)


class UnhealthyRule(RuleBase):
    """The agent reports the GPU unhealthy (fallen off the bus, NVML lost it)."""

    severity: AlertSeverity = AlertSeverity.CRITICAL
    for_s: float = Field(0.0, ge=0, le=7 * 86400)


class EventRule(RuleBase):
    """Opens at the first event; resolves after `quiet_s` without a new one (counters never go back down)."""

    severity: AlertSeverity = AlertSeverity.CRITICAL
    quiet_s: float = Field(600.0, gt=0, le=30 * 86400)


class EccRule(EventRule):
    quiet_s: float = Field(3600.0, gt=0, le=30 * 86400)


class XidRule(EventRule):
    quiet_s: float = Field(300.0, gt=0, le=30 * 86400)
    # XIDs an application causes on a healthy GPU (13 graphics engine exception, 31 MMU fault, 43 GPU stopped
    # processing, 45 preemptive cleanup): a crashing user kernel must not take the GPU out of placement.
    app_codes: list[int] = Field(default_factory=lambda: [13, 31, 43, 45])
    app_severity: AlertSeverity = AlertSeverity.WARNING
    ignore_codes: list[int] = Field(default_factory=list)


class StaleRule(RuleBase):
    """A GPU whose samples stopped while its node heartbeats, or a node whose heartbeats stopped."""

    clear_for_s: float = Field(5.0, ge=0, le=7 * 86400)
    gpu_after_s: float = Field(30.0, gt=0, le=86400)
    node_after_s: float = Field(30.0, gt=0, le=86400)
    node_severity: AlertSeverity = AlertSeverity.CRITICAL


class BusyRule(RuleBase):
    """Busy with no job placed on it: a hung kernel (utilisation stuck) or work Aether does not know about."""

    for_s: float = Field(300.0, ge=0, le=7 * 86400)
    util_pct: float = Field(90.0, gt=0, le=100)
    clear_util_pct: float = Field(50.0, ge=0, le=100)


def _default_directions() -> dict[str, Direction]:
    return {"temp_c": "high", "power_w": "high", "sm_clock_mhz": "low", "fan_pct": "high"}


def _default_min_std() -> dict[str, float]:
    return {"temp_c": 1.5, "power_w": 5.0, "sm_clock_mhz": 30.0, "fan_pct": 2.0, "mem_temp_c": 1.5,
            "util_mem_pct": 3.0, "mem_used_mb": 256.0, "pcie_rx_kbps": 50_000.0, "pcie_tx_kbps": 50_000.0}


class AnomalyRule(RuleBase):
    """EWMA z-score per GPU, metric and load band: a fast EWMA of the value against a slow baseline (mean and
    variance) learned at the same utilisation band, so a job starting is not an anomaly but a GPU running
    hotter than it used to at the same load is. Silent for `settle_s` after the load band changes (thermal lag)."""

    for_s: float = Field(60.0, ge=0, le=7 * 86400)
    clear_for_s: float = Field(60.0, ge=0, le=7 * 86400)
    metrics: dict[AnomalyMetric, Direction] = Field(default_factory=_default_directions)
    z_open: float = Field(4.0, gt=0, le=100)
    z_clear: float = Field(2.0, ge=0, le=100)
    fast_halflife_s: float = Field(10.0, gt=0, le=86400)
    baseline_halflife_s: float = Field(3600.0, gt=0, le=30 * 86400)
    warmup_s: float = Field(600.0, ge=0, le=30 * 86400, description="baseline learned this long before judging")
    settle_s: float = Field(120.0, ge=0, le=86400)
    util_bands: list[float] = Field(default_factory=lambda: [10.0, 40.0, 70.0],
                                    description="utilisation band edges (%), ascending")
    band_margin_pct: float = Field(5.0, ge=0, le=50, description="hysteresis before switching band")
    min_std: dict[str, float] = Field(default_factory=_default_min_std,
                                      description="floor of the baseline's standard deviation, per metric")
    min_std_rel: float = Field(0.02, ge=0, le=1, description="floor as a share of the baseline mean")
    relearn_after_s: float = Field(6 * 3600.0, gt=0, le=30 * 86400,
                                   description="an anomaly open this long becomes the new normal: relearn")
    min_interval_s: float = Field(1.0, ge=0, le=3600,
                                  description="judge at most one sample per GPU this often (bounds CPU at 10 Hz)")

    @model_validator(mode="after")
    def _check(self) -> AnomalyRule:
        if self.z_clear > self.z_open:
            raise ValueError("z_clear must not exceed z_open")
        if self.util_bands != sorted(self.util_bands):
            raise ValueError("util_bands must be ascending")
        return self


class Rules(_Model):
    temperature: TemperatureRule = Field(default_factory=TemperatureRule)
    memory_full: MemoryRule = Field(default_factory=MemoryRule)
    thermal_throttling: ThermalThrottleRule = Field(default_factory=ThermalThrottleRule)
    power_throttling: PowerThrottleRule = Field(default_factory=PowerThrottleRule)
    power_at_limit: PowerLimitRule = Field(default_factory=PowerLimitRule)
    ecc_dbe: EccRule = Field(default_factory=EccRule)
    xid: XidRule = Field(default_factory=XidRule)
    gpu_unhealthy: UnhealthyRule = Field(default_factory=UnhealthyRule)
    telemetry_stale: StaleRule = Field(default_factory=StaleRule)
    busy_without_job: BusyRule = Field(default_factory=BusyRule)
    anomaly: AnomalyRule = Field(default_factory=AnomalyRule)


class WebhookTarget(_Model):
    """A JSON POST of every alert event of the listed severities (opened, resolved, acknowledged)."""

    url: str = Field(pattern=r"^https?://")
    severities: list[AlertSeverity] = Field(default_factory=lambda: list(AlertSeverity))
    events: list[Literal["opened", "resolved", "acknowledged"]] = Field(
        default_factory=lambda: ["opened", "resolved", "acknowledged"])
    secret: str | None = Field(None, min_length=12, description="signs the body: X-Aether-Signature: sha256=<hmac>")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(5.0, gt=0, le=120)
    max_attempts: int = Field(6, ge=1, le=100)
    backoff_initial_s: float = Field(0.5, gt=0, le=600)
    backoff_max_s: float = Field(60.0, gt=0, le=3600)


class AlertSettings(_Model):
    enabled: bool = True
    check_interval_s: float = Field(1.0, gt=0, le=60, description="how often staleness is checked")
    queue_batches: int = Field(20000, ge=10, description="telemetry deliveries waiting for evaluation, at most")
    reorder_s: float = Field(0.25, ge=0, le=10, description="batches arriving within this window are judged "
                                                            "in sample-time order")
    recent_keep: int = Field(200, ge=0, le=10000, description="resolved alerts kept for the dashboard snapshot")
    rules: Rules = Field(default_factory=Rules)
    webhooks: list[WebhookTarget] = Field(default_factory=list)
    webhook_queue: int = Field(1000, ge=1, le=1_000_000)
    webhook_workers: int = Field(4, ge=1, le=64)
