"""Dashboard settings: DASHBOARD_* env vars over `.aether/credentials.env` over the YAML section `dashboard`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, field_validator

from services.settings import AetherSettings

HERE = Path(__file__).resolve().parent


def _env(name: str, default: Any, **kw: Any) -> Any:
    return Field(default, validation_alias=AliasChoices(f"DASHBOARD_{name.upper()}", name), **kw)


class DashboardSettings(AetherSettings):
    yaml_section: ClassVar[str] = "dashboard"
    secret_fields: ClassVar[tuple[str, ...]] = ("viewer_token",)

    host: str = _env("host", "127.0.0.1")
    port: int = _env("port", 3000, ge=0, le=65535)
    # Where the *browser* reaches the orchestrator's HTTP API (its WebSocket is `<url>/v1/ws`). Unset: the
    # page uses the host it was loaded from with `orchestrator_port`, which is right when both run on one machine.
    orchestrator_url: str | None = _env("orchestrator_url", None)
    orchestrator_port: int = _env("orchestrator_port", 8080, ge=1, le=65535)
    # A read-only token embedded in /config.js for convenience: anyone who can open the dashboard can read.
    viewer_token: str | None = _env("viewer_token", None)
    # The page marks a GPU stale when its latest sample is older than this.
    stale_after_s: float = _env("stale_after_s", 10.0, gt=0)
    static_dir: Path = _env("static_dir", HERE / "static")
    node_modules_dir: Path = _env("node_modules_dir", HERE / "node_modules")

    @field_validator("orchestrator_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (the orchestrator's HTTP API as the browser sees it)")
        return v
