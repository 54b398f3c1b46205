"""Orchestrator settings: env vars (DATABASE_URL, NATS_URL, AI_CORE_URL, AETHER_*) over YAML section `orchestrator`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator

from orchestrator.alerts.config import AlertSettings
from orchestrator.carbon.config import CarbonSettings
from services.settings import AetherSettings


class TokenSpec(BaseModel):
    token: str = Field(min_length=12)
    role: Literal["viewer", "submitter", "operator", "admin"]
    tenant: str | None = None
    name: str | None = None


class TenantQuota(BaseModel):
    """Limits on one tenant's unfinished jobs (PENDING, SCHEDULED or RUNNING); 0 means no limit."""

    max_active_jobs: int = Field(0, ge=0)
    max_gpus: int = Field(0, ge=0)


class OrchestratorSettings(AetherSettings):
    yaml_section: ClassVar[str] = "orchestrator"
    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "operator_token", "viewer_token")

    database_url: str = "postgresql://aether@127.0.0.1:5432/aether"
    ai_core_url: str = "http://127.0.0.1:8000"
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("ORCHESTRATOR_HOST", "host"))
    port: int = Field(8080, ge=0, le=65535, validation_alias=AliasChoices("ORCHESTRATOR_PORT", "port"))
    instance_id: str | None = Field(None, validation_alias=AliasChoices("ORCHESTRATOR_INSTANCE_ID", "instance_id"))
    auto_migrate: bool = True

    # Auth: AETHER_API_TOKEN is an admin token; more tokens (with tenants) come from YAML `tokens:`.
    auth_enabled: bool = Field(True, validation_alias=AliasChoices("AETHER_AUTH_ENABLED", "auth_enabled"))
    api_token: str | None = Field(None, validation_alias=AliasChoices("AETHER_API_TOKEN", "api_token"))
    operator_token: str | None = Field(None, validation_alias=AliasChoices("AETHER_OPERATOR_TOKEN", "operator_token"))
    viewer_token: str | None = Field(None, validation_alias=AliasChoices("AETHER_VIEWER_TOKEN", "viewer_token"))
    tokens: list[TokenSpec] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:3000", "http://localhost:3000"])

    # Telemetry ingest
    telemetry_stream_max_age_s: float = 24 * 3600
    stream_replicas: int = Field(1, ge=1, le=5)
    ingest_consumer: str = "aether-ingest"
    ingest_batch: int = Field(256, ge=1, le=10000, description="messages asked for per pull request (at least)")
    ingest_max_ack_pending: int = Field(20000, ge=1, description="consumer-wide: shared by every replica")
    ingest_ack_wait_s: float = Field(30.0, gt=0, description="unacked this long: redelivered (to any replica)")
    ingest_fetch_timeout_s: float = Field(30.0, gt=0, description="expiry of one pull request")
    ingest_credit: int = Field(4096, ge=1, description="messages one replica holds unacked at most")
    ingest_write_max_msgs: int = Field(1000, ge=1, le=100_000, description="messages per COPY transaction")
    ingest_writers: int = Field(2, ge=1, le=16, description="concurrent COPY transactions")
    ingest_linger_s: float = Field(0.025, ge=0, le=1, description="at a trickle, wait this long to batch more")
    ingest_heartbeat_s: float = Field(5.0, gt=0, description="idle heartbeat of pull requests")
    ingest_max_future_s: float = Field(300.0, gt=0, description="samples dated further ahead are dead-lettered")
    ingest_late_after_s: float = Field(60.0, gt=0, description="older samples mark their minutes for re-rollup")
    # Ingest holds ~250k GC-tracked objects in flight: at 50,000 the collector rescanned them every ~1,000 messages
    # (-15 % CPU per sample at 1,000,000, bench/ingest.py --gc-threshold).
    ingest_gc_threshold: int = Field(1_000_000, ge=0, description="gen-0 GC threshold set by ingest; 0: Python's")

    # Telemetry storage (orchestrator/partitions.py): retention, compression, rollup, read API.
    telemetry_raw_retention_days: float = Field(7.0, gt=0)
    telemetry_rollup_retention_days: float = Field(90.0, gt=0)
    telemetry_compress_after_h: float = Field(6.0, gt=0, description="TimescaleDB: raw chunks compressed after")
    telemetry_partitions_ahead_days: int = Field(3, ge=1, le=60, description="plain PostgreSQL: days made ahead")
    telemetry_maintenance_s: float = Field(60.0, gt=0, description="plain PostgreSQL: rollup/retention period")
    telemetry_max_points: int = Field(20000, ge=10, description="rows one telemetry query may return")

    # Cluster membership
    heartbeat_timeout_s: float = Field(15.0, gt=0)
    sample_stale_s: float = Field(10.0, gt=0)

    # WebSocket fan-out
    ws_client_queue: int = Field(256, ge=8)
    ws_push_interval_s: float = Field(0.25, gt=0)
    # permessage-deflate compresses the same fan-out message once per client: at 1,000 GPUs that is ~20 ms of CPU
    # per client per second (measured), so 100 dashboards would need two cores. Off by default; turn it on when
    # dashboards sit behind slow links (the JSON compresses ~15x).
    ws_compression: bool = False

    # Jobs (orchestrator/jobs): admission, scheduling, dispatch, reports, retention.
    job_max_queue: int = Field(10000, ge=1, description="PENDING jobs beyond which submissions get QUEUE_FULL")
    job_tenant_max_active_jobs: int = Field(0, ge=0, description="default per-tenant limit; 0: none")
    job_tenant_max_gpus: int = Field(0, ge=0, description="default per-tenant GPU limit; 0: none")
    job_tenant_quotas: dict[str, TenantQuota] = Field(default_factory=dict, description="per-tenant overrides")
    job_max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    job_max_retries: int = Field(2, ge=0, le=100, description="re-queues of a LOST job before it is FAILED")
    job_dispatch_timeout_s: float = Field(5.0, gt=0, le=300)
    job_dispatch_exclude_s: float = Field(60.0, ge=0, description="a node that did not ack is avoided this long")
    job_reconcile_grace_s: float = Field(10.0, gt=0, description="absent from heartbeats this long -> LOST")
    job_retention_h: float = Field(168.0, ge=24, description="finished jobs (events, logs) kept this long")
    job_scheduler_batch: int = Field(256, ge=1, le=10000)
    job_placement_concurrency: int = Field(32, ge=1, le=1024)
    job_placement_max_candidates: int = Field(32, ge=1, le=20000,
                                              description="GPUs offered to placement per job (pre-ranked)")
    job_reports_consumer: str = "aether-job-reports"
    job_reports_batch: int = Field(256, ge=1, le=10000)
    job_stream_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    job_log_max_lines: int = Field(100_000, ge=100, description="stored lines per job attempt")
    job_leader_check_s: float = Field(1.0, gt=0, le=60)

    # Alerts and carbon accounting (orchestrator/alerts, orchestrator/carbon): nested YAML sections.
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    carbon: CarbonSettings = Field(default_factory=CarbonSettings)

    @field_validator("database_url")
    @classmethod
    def _dsn(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    def all_tokens(self) -> list[TokenSpec]:
        out = list(self.tokens)
        if self.api_token:
            out.append(TokenSpec(token=self.api_token, role="admin", name="api"))
        if self.operator_token:
            out.append(TokenSpec(token=self.operator_token, role="operator", name="operator"))
        if self.viewer_token:
            out.append(TokenSpec(token=self.viewer_token, role="viewer", name="viewer"))
        return out
