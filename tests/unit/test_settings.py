"""Settings: env vars over the credentials file over YAML; bad values stop the service naming the key."""

from __future__ import annotations

import pytest

from orchestrator.settings import OrchestratorSettings
from services.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in ("DATABASE_URL", "NATS_URL", "AETHER_API_TOKEN", "AETHER_CONFIG", "ORCHESTRATOR_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AETHER_CREDENTIALS", str(tmp_path / "none.env"))


def test_yaml_then_env_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "aether.yaml"
    cfg.write_text("nats_url: nats://127.0.0.1:1111\norchestrator:\n  heartbeat_timeout_s: 7\n  port: 9000\n")
    monkeypatch.setenv("AETHER_CONFIG", str(cfg))
    s = OrchestratorSettings()
    assert s.nats_url == "nats://127.0.0.1:1111" and s.heartbeat_timeout_s == 7 and s.port == 9000
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:2222")
    monkeypatch.setenv("ORCHESTRATOR_PORT", "9100")
    s = OrchestratorSettings()
    assert s.nats_url == "nats://127.0.0.1:2222" and s.port == 9100


def test_credentials_file_is_read(tmp_path, monkeypatch):
    creds = tmp_path / "credentials.env"
    creds.write_text("# generated\nDATABASE_URL='postgresql://u:p@127.0.0.1:5/x'\nAETHER_API_TOKEN=abcdefghijklmnop\n")
    monkeypatch.setenv("AETHER_CREDENTIALS", str(creds))
    s = OrchestratorSettings()
    assert s.database_url == "postgresql://u:p@127.0.0.1:5/x"
    assert s.api_token == "abcdefghijklmnop"


def test_placeholder_secret_refused(monkeypatch):
    monkeypatch.setenv("AETHER_API_TOKEN", "changeme")
    with pytest.raises(ConfigError, match="AETHER_API_TOKEN|API_TOKEN"):
        OrchestratorSettings()


def test_bad_value_names_the_key(monkeypatch, capsys):
    monkeypatch.setenv("ORCHESTRATOR_PORT", "not-a-port")
    with pytest.raises(SystemExit):
        OrchestratorSettings.load()
    assert "PORT" in capsys.readouterr().err


def test_bad_yaml_is_a_config_error(tmp_path, monkeypatch):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("- just\n- a list\n")
    monkeypatch.setenv("AETHER_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="mapping"):
        OrchestratorSettings()
