"""Settings base: environment variables over `.aether/credentials.env` over an optional YAML file, validated at start."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from services.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def credentials_path() -> Path:
    """`.aether/credentials.env` (written by ./setup.sh), or AETHER_CREDENTIALS; read at each load."""
    return Path(os.environ.get("AETHER_CREDENTIALS", ROOT / ".aether" / "credentials.env"))

# Values people paste from examples; a service refuses to start with one of them as a secret.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password", "token", "xxx",
                                 "replace-me", "example", "test", "admin", "default"})


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the section of `AETHER_CONFIG` (a YAML file) named by the settings class, plus top-level keys."""

    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        path = os.environ.get("AETHER_CONFIG")
        if path:
            try:
                raw = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"AETHER_CONFIG={path}: cannot read YAML: {exc}") from exc
            if not isinstance(raw, dict):
                raise ConfigError(f"AETHER_CONFIG={path}: top level must be a mapping")
            common = {k: v for k, v in raw.items() if not isinstance(v, dict)}
            section_data = raw.get(section) or {}
            self._data = {**common, **section_data}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """Parse shell `KEY=value` lines (quotes stripped); missing file means no values."""
    path = path or credentials_path()
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, val = line.removeprefix("export ").partition("=")
        values[key.strip()] = val.strip().strip("'\"")
    return values


class AetherSettings(BaseSettings):
    """Common settings; each service subclasses it and names its YAML section."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "common"
    secret_fields: ClassVar[tuple[str, ...]] = ()

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The credentials file is read like a .env file, so field aliases (AETHER_API_TOKEN) work there too.
        return (init_settings, env_settings, DotEnvSettingsSource(settings_cls, env_file=credentials_path()),
                _YamlSource(settings_cls, cls.yaml_section))

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v

    def model_post_init(self, __context: Any) -> None:
        for name in self.secret_fields:
            value = getattr(self, name, None)
            if value is not None and (str(value).strip().lower() in PLACEHOLDER_SECRETS or len(str(value)) < 12):
                raise ConfigError(f"{name.upper()} is a placeholder or shorter than 12 characters; "
                                  "generate one (./setup.sh writes .aether/credentials.env)", field=name)

    @classmethod
    def load(cls, **overrides: Any):
        """Build and validate; on a bad value, print which key and why, and exit (a service must not half-start)."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            lines = [f"  {'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
            print(f"{cls.__name__}: invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
            raise SystemExit(2) from exc
        except ConfigError as exc:
            print(f"{cls.__name__}: invalid configuration: {exc.message}", file=sys.stderr)
            raise SystemExit(2) from exc
