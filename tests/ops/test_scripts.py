"""setup.sh and friends: shell syntax, generated credentials (mode 600, never regenerated), and the
supervisord configuration they render (parsed by supervisor itself)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import credentials
import pytest
import render_config
import stack
from supervisor.options import ServerOptions

from services.settings import read_env_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["setup.sh", "restart.sh", "stop.sh", "test.sh", ".ci/run", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "scripts" / "lib").glob("*.sh"))]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_syntax(script):
    out = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", ["setup.sh", "restart.sh", "stop.sh", "test.sh", ".ci/run"])
def test_entry_points_are_executable_and_strict(script):
    path = ROOT / script
    assert path.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    head = path.read_text().splitlines()[:12]
    assert head[0] == "#!/usr/bin/env bash"
    assert any(line.startswith("set -") and "u" in line and "o pipefail" in line for line in head)


def test_readme_opens_with_the_two_commands():
    first = (ROOT / "README.md").read_text().splitlines()[:15]
    text = "\n".join(first)
    assert "./setup.sh" in text and "./test.sh" in text
    assert text.index("./setup.sh") < text.index("./test.sh")


def test_readme_reference_is_current():
    import readme_reference

    current = (ROOT / "README.md").read_text()
    assert readme_reference.render(current) == current, \
        "README.md's generated sections are stale: run .venv/bin/python scripts/readme_reference.py --write"
    assert "aether.telemetry.<node>" in current and "`TelemetrySample`" in current and "`DATABASE_URL`" in current


def test_credentials_generated_once_private_and_completed(tmp_path):
    path = tmp_path / "credentials.env"
    added = credentials.ensure_credentials(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = read_env_file(path)
    for key in ("AETHER_API_TOKEN", "AETHER_OPERATOR_TOKEN", "AETHER_VIEWER_TOKEN", "DATABASE_URL", "NATS_URL",
                "AI_CORE_URL", "NATS_USER", "NATS_PASSWORD", "NATS_READONLY_USER", "NATS_READONLY_PASSWORD"):
        assert first.get(key), f"{key} missing"
    assert set(added) == set(first)
    assert len({first["AETHER_API_TOKEN"], first["AETHER_OPERATOR_TOKEN"], first["AETHER_VIEWER_TOKEN"]}) == 3
    assert first["DASHBOARD_VIEWER_TOKEN"] == first["AETHER_VIEWER_TOKEN"]
    parts = credentials.database_parts(first["DATABASE_URL"])
    assert parts["user"] == "aether" and parts["database"] == "aether" and len(parts["password"]) >= 32

    assert credentials.ensure_credentials(path) == []  # second run: nothing regenerated
    assert read_env_file(path) == first

    # A key deleted by hand comes back; every other value stays as it was.
    kept = [line for line in path.read_text().splitlines() if not line.startswith("NATS_PASSWORD=")]
    path.write_text("\n".join(kept) + "\n")
    assert credentials.ensure_credentials(path) == ["NATS_PASSWORD"]
    again = read_env_file(path)
    assert again["NATS_PASSWORD"] and again["NATS_PASSWORD"] != first["NATS_PASSWORD"]
    assert {k: v for k, v in again.items() if k != "NATS_PASSWORD"} == \
        {k: v for k, v in first.items() if k != "NATS_PASSWORD"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_node_account_files(tmp_path, monkeypatch, unique_node):
    monkeypatch.setattr(credentials, "NODES", tmp_path / "nodes")
    monkeypatch.setattr(credentials, "CREDENTIALS", tmp_path / "credentials.env")
    credentials.ensure_credentials(tmp_path / "credentials.env")
    path = credentials.ensure_node(unique_node)
    env = read_env_file(path)
    assert env["NATS_USER"] == f"agent-{unique_node}" and len(env["NATS_PASSWORD"]) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(env) == {"NATS_USER", "NATS_PASSWORD", "NATS_URL"}, "an agent gets its NATS account, nothing else"
    assert read_env_file(credentials.ensure_node(unique_node)) == env
    with pytest.raises(ValueError):
        credentials.ensure_node("../etc")


@pytest.mark.parametrize("as_root", [False, True])
def test_supervisord_config_parses_and_orders_the_stack(tmp_path, as_root, monkeypatch):
    # As root PostgreSQL and NATS run as an unprivileged account; any existing one does for parsing.
    monkeypatch.setattr(render_config, "PG_OS_USER", pwd.getpwuid(os.getuid()).pw_name)
    progs = stack.programs(timescale=True)
    conf = tmp_path / "supervisord.conf"
    for name in [p.name for p in progs] + ["supervisord"]:
        (tmp_path / "logs" / name).mkdir(parents=True)
    (tmp_path / "run").mkdir()
    conf.write_text(render_config.supervisor_config(progs, as_root, tmp_path / "logs", tmp_path / "run"))
    opts = ServerOptions()
    opts.realize(args=["-c", str(conf)], doc="")
    groups = {g.name: g.process_configs[0] for g in opts.process_group_configs}
    assert set(groups) == {p.name for p in progs}
    assert {"postgres", "nats", "orchestrator", "ai_core", "dashboard"} <= set(groups)
    assert any(name.startswith("agent-") for name in groups)
    pg, nats = groups["postgres"], groups["nats"]
    assert pg.autostart and nats.autostart
    for name, pc in groups.items():
        if name not in ("postgres", "nats"):
            assert not pc.autostart, f"{name} is started by the scripts once the database is ready"
            assert pc.priority > pg.priority, f"{name} must stop before PostgreSQL and NATS"
        assert bool(pc.autorestart) == (name != "ai_core-train"), f"{name}: only the one-shot training stays down"
        assert pc.stdout_logfile.endswith(f"/logs/{name}/{name}.log")
        assert Path(pc.command.split()[0]).name in ("postgres", "nats-server", "python")
    assert (pg.uid is not None) == as_root and (nats.uid is not None) == as_root  # never root when run as root
    assert pg.stopsignal == 2  # SIGINT: PostgreSQL's fast shutdown
    assert "shared_preload_libraries=timescaledb" in pg.command and "timescaledb.telemetry_level=off" in pg.command
    assert "listen_addresses=127.0.0.1" in pg.command
    agent = next(pc for name, pc in groups.items() if name.startswith("agent-"))
    assert "/nodes/" in agent.environment["AETHER_CREDENTIALS"], "agents get only their node's NATS account"
