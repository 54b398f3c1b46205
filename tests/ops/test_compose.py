"""docker-compose.yml, checked without a Docker engine: valid against the Compose specification's JSON schema
(tests/ops/compose-spec.json, vendored), and consistent with the code: every environment variable is one the
service's Settings class reads (with the value it would get), ports and health URLs match, commands exist."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import render_config
import stack
import yaml
from credentials import compose_env
from pydantic import AliasChoices

from ai_core.settings import AiCoreSettings
from dashboard.settings import DashboardSettings
from orchestrator.settings import OrchestratorSettings
from services.settings import read_env_file

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SETTINGS = {"migrate": OrchestratorSettings, "orchestrator": OrchestratorSettings, "ai_core": AiCoreSettings,
            "model-init": AiCoreSettings, "dashboard": DashboardSettings}
ONE_SHOT = ("migrate", "model-init")
AGENTS = {"agent-sim": "sim-1", "agent-gpu": "gpu-1"}
PORT_VARS = {"orchestrator": "ORCHESTRATOR_PORT", "ai_core": "AI_CORE_PORT", "dashboard": "DASHBOARD_PORT"}
# Variables read by something other than a Settings class (the NVIDIA container runtime).
NOT_SETTINGS = {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}
VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ${V}, ${V:-default}, ${V-default}, ${V:?error}, ${V?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        have = env.get(name)
        if op in (":-", "-"):
            return have if (have if op == ":-" else have is not None) else arg
        if op in (":?", "?") and not have:
            raise KeyError(f"${{{name}}} is required ({arg}) and compose-env does not write it")
        return have or ""

    return VAR_RE.sub(sub, value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("compose") / ".env"
    path.write_text(compose_env())
    return read_env_file(path)


@pytest.fixture(scope="module")
def compose(raw, env_file) -> dict:
    return interpolate(raw, env_file)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def names_read_by(cls) -> dict[str, str]:
    """UPPER-CASE environment names a Settings class reads -> the field they set."""
    names = {}
    for field_name, info in cls.model_fields.items():
        names[field_name.upper()] = field_name
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else []
        for choice in choices:
            if isinstance(choice, str):
                names[choice.upper()] = field_name
    return names


def settings_class(name: str):
    if name in AGENTS:
        from agent.settings import AgentSettings

        return AgentSettings
    return SETTINGS[name]


def test_valid_against_the_compose_specification(compose):
    schema = json.loads((HERE / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def test_schema_rejects_what_compose_rejects(compose):
    """The vendored schema is the real one: an unknown service key and a bad depends_on condition fail it."""
    schema = json.loads((HERE / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    bad = json.loads(json.dumps(compose))
    bad["services"]["orchestrator"]["helthcheck"] = {}
    bad["services"]["dashboard"]["depends_on"]["orchestrator"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(bad))) >= 2


def test_every_required_variable_comes_from_compose_env(raw, env_file):
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", text))
    assert required <= set(env_file), f"not written by compose-env: {required - set(env_file)}"
    with pytest.raises(KeyError):
        interpolate(raw, {})  # no .env: compose refuses to start rather than run with default secrets


def test_services_profiles_health_checks_and_dependencies(compose):
    services = compose["services"]
    assert {"nats", "timescaledb", "migrate", "model-init", "orchestrator", "ai_core", "dashboard", "agent-sim",
            "agent-gpu"} <= set(services)
    assert services["nats"]["image"].startswith("nats:")
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot job: restart must be 'no'"
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} runs once"
        else:
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        assert (svc.get("profiles") is not None) == (name == "agent-gpu"), f"{name}: only the GPU agent has a profile"
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in (compose.get("volumes") or {}), f"{name}: volume {source} is not declared"
            else:
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    devices = services["agent-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["agent-gpu"]["profiles"] == ["gpu"]
    assert "nats-data" in compose["volumes"] and "pg-data" in compose["volumes"]


@pytest.mark.parametrize("name", ["migrate", "model-init", "orchestrator", "ai_core", "dashboard", "agent-sim",
                                  "agent-gpu"])
def test_environment_is_what_the_settings_read(compose, name, monkeypatch, tmp_path):
    env = environment(compose["services"][name])
    cls = settings_class(name)
    read = names_read_by(cls)
    unknown = {k for k in env if k.upper() not in read and k not in NOT_SETTINGS}
    assert not unknown, f"{name}: {cls.__name__} reads none of {sorted(unknown)}"

    # And with exactly that environment the service validates and gets those values.
    monkeypatch.setenv("AETHER_CREDENTIALS", str(tmp_path / "absent.env"))
    monkeypatch.delenv("AETHER_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = cls()
    for key, value in env.items():
        if key in NOT_SETTINGS:
            continue
        got = getattr(settings, read[key.upper()])
        assert str(got) == value, f"{name}: {key}={value!r} but {cls.__name__}.{read[key.upper()]} is {got!r}"


def command_flags(argv: list[str]) -> dict[str, str | bool]:
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags[argv[i]] = argv[i + 1]
                i += 1
            else:
                flags[argv[i]] = True
        i += 1
    return flags


@pytest.mark.parametrize("name", ["migrate", "orchestrator", "ai_core", "dashboard", "agent-sim", "agent-gpu"])
def test_commands_ports_and_health_urls_match_the_code(compose, name):
    svc = compose["services"][name]
    cmd = svc["command"]
    assert cmd[:2] == ["python", "-m"], f"{name}: command {cmd}"
    module = cmd[2]
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{name}: no module {module}"
    if spec.submodule_search_locations:  # a package: needs __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{name}: {module} has no __main__"
    if name == "migrate":
        return

    env = environment(svc)
    if name in AGENTS:
        flags = command_flags(cmd[3:])
        assert flags["--node"] == AGENTS[name]
        port = int(flags["--http-port"])
        assert env["NATS_USER"] == f"agent-{AGENTS[name]}", "an agent connects with its own node's NATS account"
        assert env["NATS_PASSWORD"], "agent password must be set"
        # The same agent invocation setup.sh supervises, apart from the node's own flags.
        local = next(p for p in stack.programs(timescale=False) if p.module == "agent")
        local_flags = set(command_flags(local.command[3:])) - {"--gpus", "--simulated"}
        assert local_flags <= set(flags), f"{name}: supervisord passes {local_flags}, compose {set(flags)}"
    else:
        # The port variable is one the Settings read (test_environment_is_what_the_settings_read).
        port = int(env[PORT_VARS[name]])
        published = [str(p).rsplit(":", 2) for p in svc.get("ports", [])]
        assert any(int(p[-1]) == port for p in published), f"{name}: port {port} not published: {published}"
    health = " ".join(svc["healthcheck"]["test"])
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/.?=-]*)", health)
    assert m and int(m.group(1)) == port, f"{name}: health check {health} does not probe port {port}"
    local_health = {p.module: p.health_url for p in stack.programs(timescale=False) if p.module and p.health_url}
    assert local_health[module].endswith(m.group(2)), f"{name}: health path {m.group(2)} vs {local_health[module]}"


def test_model_init_trains_once_into_the_ai_cores_model_volume(compose):
    init, ai = compose["services"]["model-init"], compose["services"]["ai_core"]
    script = init["command"][-1]
    model_dir = environment(ai)["AI_CORE_MODEL_DIR"]
    assert environment(init)["AI_CORE_MODEL_DIR"] == model_dir
    assert f"test -s {model_dir}/CURRENT ||" in script, "trains only when no model is active"
    module = re.search(r"python -m (\S+)", script).group(1)
    assert importlib.util.find_spec(module) is not None
    assert any(v.endswith(f":{model_dir}") for v in init["volumes"]) and init["volumes"] == ai["volumes"]
    import ai_core.registry

    assert "CURRENT" in (ai_core.registry.__doc__ or ""), "the registry no longer names its active model CURRENT"


def test_agent_accepts_the_flags_compose_gives_it(compose):
    if importlib.util.find_spec("agent.__main__") is None:
        pytest.fail("agent has no __main__: docker-compose.yml and setup.sh run `python -m agent`")
    out = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in AGENTS:
        for flag in command_flags(compose["services"][name]["command"][3:]):
            assert flag in out.stdout, f"`python -m agent --help` does not list {flag}"


def test_nats_config_is_current_and_valid(compose, tmp_path):
    conf = ROOT / "deploy" / "compose" / "nats.conf"
    assert conf.read_text() == render_config.compose_nats_config(), \
        "deploy/compose/nats.conf is stale: run scripts/render_config.py --compose"
    nats = compose["services"]["nats"]
    env = environment(nats)
    assert set(re.findall(r"password: \$([A-Z_]+)", conf.read_text())) == set(env)
    for svc_name, node in AGENTS.items():
        svc_env = environment(compose["services"][svc_name])
        var = render_config.COMPOSE_AGENTS[node]
        assert svc_env["NATS_PASSWORD"] == env[var], f"{svc_name} and nats disagree on {var}"
    assert environment(compose["services"]["orchestrator"])["NATS_PASSWORD"] == env["NATS_PASSWORD"]
    # nats-server itself parses it (-t: test the configuration and exit), with the variables compose-env
    # writes: nats-server reads a variable's value as a config value, so each must start with a letter.
    assert all(v[0].isalpha() for v in env.values()), env
    out = subprocess.run([str(stack.VENV_BIN / "nats-server"), "-t", "-c", str(conf)], capture_output=True,
                         text=True, timeout=30, env={**env, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr + out.stdout


def test_database_role_script_and_dockerfile(compose):
    db = compose["services"]["timescaledb"]
    env = environment(db)
    assert env["TIMESCALEDB_TELEMETRY"] == "off"
    url = environment(compose["services"]["orchestrator"])["DATABASE_URL"]
    assert f"aether:{env['AETHER_DB_PASSWORD']}@timescaledb:5432/{env['POSTGRES_DB']}" in url
    script = ROOT / "deploy" / "compose" / "initdb" / "010-aether-role.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert "NOSUPERUSER" in script.read_text()

    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert importlib.util.find_spec(cmd[2]) is not None
    assert re.search(r"^USER aether$", dockerfile, re.M), "services must not run as root in the image"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for secret_or_state in (".env", ".aether", ".venv", ".git"):
        assert secret_or_state in ignored, f".dockerignore must keep {secret_or_state} out of the image"
