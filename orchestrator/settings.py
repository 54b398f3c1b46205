"""Orchestrator settings: env vars (DATABASE_URL, NATS_URL, AI_CORE_URL, AETHER_*) over YAML section `orchestrator`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator

from services.settings import AetherSettings


class TokenSpec(BaseModel):
    token: str = Field(min_length=12)
    role: Literal["viewer", "submitter", "operator", "admin"]
    tenant: str | None = None
    name: str | None = None


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
    ingest_batch: int = Field(256, ge=1, le=10000)
    ingest_max_ack_pending: int = Field(20000, ge=1)
    ingest_ack_wait_s: float = Field(30.0, gt=0)
    ingest_fetch_timeout_s: float = Field(0.25, gt=0)

    # Cluster membership
    heartbeat_timeout_s: float = Field(15.0, gt=0)
    sample_stale_s: float = Field(10.0, gt=0)

    # WebSocket fan-out
    ws_client_queue: int = Field(256, ge=8)
    ws_push_interval_s: float = Field(0.25, gt=0)

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
