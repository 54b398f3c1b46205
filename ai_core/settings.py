"""AI core settings: env vars (AI_CORE_HOST, AI_CORE_PORT, AI_CORE_MODEL_DIR, DATABASE_URL, NATS_URL) over YAML `ai_core`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field, field_validator

from services.settings import ROOT, AetherSettings

DEFAULT_MODEL_DIR = ROOT / ".aether" / "models"


class AiCoreSettings(AetherSettings):
    yaml_section: ClassVar[str] = "ai_core"

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("AI_CORE_HOST", "host"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("AI_CORE_PORT", "port"))
    model_dir: Path = Field(DEFAULT_MODEL_DIR, validation_alias=AliasChoices("AI_CORE_MODEL_DIR", "model_dir"))
    database_url: str | None = None
    # Threads XGBoost may use for one batch. One: up to ~1,000 candidates a batch is fastest on one thread, and on
    # a busy host OpenMP threads waiting on each other cost tens of ms. Raise it for 10,000-candidate clusters.
    predict_threads: int = Field(1, ge=1, le=256,
                                 validation_alias=AliasChoices("AI_CORE_PREDICT_THREADS", "predict_threads"))
    top_contributions: int = Field(8, ge=1, le=64)
    # TreeSHAP (exact) costs ~2 ms a row for a typical model; the default Saabas attribution ~0.05 ms.
    exact_contributions: bool = Field(False, validation_alias=AliasChoices("AI_CORE_EXACT_CONTRIBUTIONS",
                                                                           "exact_contributions"))
    max_body_mb: float = Field(32.0, gt=0, le=512)
    # No bus for hot reload is not fatal: the service keeps serving the model it has and keeps retrying.
    nats_enabled: bool = Field(True, validation_alias=AliasChoices("AI_CORE_NATS_ENABLED", "nats_enabled"))

    @field_validator("database_url")
    @classmethod
    def _dsn(cls, v: str | None) -> str | None:
        if v is not None and v != "" and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v or None
