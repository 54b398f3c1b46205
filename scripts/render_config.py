"""Render `.aether/supervisord.conf` and `.aether/nats/nats-server.conf` from the templates in `deploy/`, and
prepare the folders they name (PostgreSQL's and NATS's owned by the unprivileged account when run as root)."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import socket
import sys
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import credentials  # noqa: E402
import stack  # noqa: E402

from services import subjects  # noqa: E402
from services.bus import JOBS_STREAM  # noqa: E402
from services.localstack import ensure_os_user  # noqa: E402
from services.settings import read_env_file  # noqa: E402

DEPLOY = ROOT / "deploy"
LOG_DIR = stack.STATE / "logs"
RUN_DIR = stack.STATE / "run"
SUPERVISOR_CONF = stack.STATE / "supervisord.conf"
PG_OS_USER = os.environ.get("AETHER_PG_OS_USER", "aether")


def _q(value: str) -> str:
    """A double-quoted NATS config string."""
    return json.dumps(value)


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def agent_permissions(node: str) -> dict[str, list[str]]:
    """What the agent of `node` may do on the bus: its own subjects only (its job reports and output carry its
    node in the subject, so it cannot report on another node's job), and replies.
    It may create the two streams it publishes into (an agent can start before the orchestrator; creating
    a stream that exists with another configuration fails) but not update or delete them."""
    streams = (subjects.TELEMETRY_STREAM, JOBS_STREAM)
    return {
        "publish": [subjects.telemetry(node), subjects.heartbeat(node), *subjects.agent_job_subjects(node),
                    f"{subjects.PREFIX}.alerts.*.{node}", f"{subjects.DEADLETTER_PREFIX}.>",
                    "$JS.API.INFO", *(f"$JS.API.STREAM.{op}.{s}" for s in streams for op in ("INFO", "CREATE"))],
        # _INBOX.> carries the JetStream publish acknowledgements and request replies.
        "subscribe": [f"{subjects.PREFIX}.cmd.{node}.>", "_INBOX.>"],
    }


def readonly_permissions() -> dict[str, list[str]]:
    """Custom tooling: live subjects and stream information. Not commands (job specs carry environments),
    not job logs (tenants' output), not the dead-letter subjects; no JetStream consumer management (acks
    on a shared durable consumer would steal the orchestrator's messages)."""
    return {
        "publish": ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.STREAM.INFO.*"],
        "subscribe": [subjects.TELEMETRY_ALL, subjects.HEARTBEAT_ALL, subjects.JOB_STATE_ALL, subjects.JOB_REPORT_ALL,
                      subjects.ALERTS_ALL,
                      subjects.PLACEMENT, subjects.CLUSTER, subjects.MODEL_UPDATED, "_INBOX.>"],
    }


def _user(name: str, password: str, perms: dict[str, list[str]] | None, responses: bool = False) -> str:
    """One user entry; `password` is either a literal or a `$VARIABLE` nats-server takes from its environment."""
    pw = password if password.startswith("$") else _q(password)
    parts = [f"user: {_q(name)}", f"password: {pw}"]
    if perms is not None:
        body = f"publish: {{ allow: {_list(perms['publish'])} }}, subscribe: {{ allow: {_list(perms['subscribe'])} }}"
        if responses:
            body += ", allow_responses: true"  # reply to the orchestrator's requests on aether.cmd.<node>.*
        parts.append(f"permissions: {{ {body} }}")
    return "    { " + ", ".join(parts) + " }"


def nats_config(service: tuple[str, str], readonly: tuple[str, str], agents: dict[str, tuple[str, str]], *,
                listen: str, monitor: str, store_dir: str, server_name: str, passwords_from: str,
                tls: str = "") -> str:
    """The nats-server configuration: (user, password) of the services, the read-only user, each node's agent."""
    users = [_user(*service, None), _user(*readonly, readonly_permissions())]
    for node, (user, password) in sorted(agents.items()):
        users.append(_user(user, password, agent_permissions(node), responses=True))
    return Template((DEPLOY / "nats-server.conf.tmpl").read_text()).substitute(
        server_name=server_name, listen=listen, monitor=monitor, store_dir=store_dir, tls=tls,
        passwords_from=passwords_from,
        users=",\n".join(users), service_user=service[0], readonly_user=readonly[0])


def local_nats_config(creds: dict[str, str], nodes: dict[str, dict[str, str]]) -> str:
    """This machine's: passwords from the credentials files; loopback unless AETHER_NATS_LISTEN names another
    address, TLS when AETHER_NATS_TLS_CERT/KEY are set (in the environment or in credentials.env)."""

    def setting(name: str, default: str = "") -> str:
        return os.environ.get(name) or creds.get(name) or default

    tls = ""
    cert, key = setting("AETHER_NATS_TLS_CERT"), setting("AETHER_NATS_TLS_KEY")
    if cert and key:
        tls = f"\ntls {{\n  cert_file: {_q(cert)}\n  key_file: {_q(key)}\n  timeout: 5\n}}\n"
    return nats_config(
        (creds["NATS_USER"], creds["NATS_PASSWORD"]), (creds["NATS_READONLY_USER"], creds["NATS_READONLY_PASSWORD"]),
        {node: (env["NATS_USER"], env["NATS_PASSWORD"]) for node, env in nodes.items()},
        listen=f"{setting('AETHER_NATS_LISTEN', '127.0.0.1')}:{stack.NATS_PORT}",
        monitor=f"127.0.0.1:{stack.NATS_MONITOR_PORT}",
        store_dir=str(stack.NATS_STORE), server_name=f"aether-{re_token(socket.gethostname().split('.')[0])}", tls=tls,
        passwords_from="Passwords come from .aether/credentials.env and .aether/nodes/<node>.env.")


COMPOSE_NATS_CONF = DEPLOY / "compose" / "nats.conf"
# docker-compose.yml's agents and the variables (from .env) holding their passwords.
COMPOSE_AGENTS = {"sim-1": "NATS_AGENT_SIM_PASSWORD", "gpu-1": "NATS_AGENT_GPU_PASSWORD"}


def compose_nats_config() -> str:
    """deploy/compose/nats.conf: the same users and permissions, passwords from the container's environment."""
    return nats_config(
        ("aether", "$NATS_PASSWORD"), ("aether-readonly", "$NATS_READONLY_PASSWORD"),
        {node: (f"agent-{node}", f"${var}") for node, var in COMPOSE_AGENTS.items()},
        listen=f"0.0.0.0:{stack.NATS_PORT}", monitor=f"0.0.0.0:{stack.NATS_MONITOR_PORT}",
        store_dir="/data/jetstream", server_name="aether-compose",
        passwords_from="Passwords ($NAME) come from the container's environment: compose fills it from .env.")


def re_token(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text) or "host"


def _sv_env(env: dict[str, str]) -> str:
    # supervisord expands %(...)s in values: a literal % must be doubled.
    return ",".join(f'{k}="{v.replace("%", "%%")}"' for k, v in env.items())


def supervisor_config(progs: list[stack.Program], as_root: bool, log_dir: Path = LOG_DIR, run_dir: Path = RUN_DIR) -> str:
    program_tmpl = Template((DEPLOY / "supervisord-program.conf.tmpl").read_text())
    blocks = []
    for p in progs:
        env = {"PYTHONUNBUFFERED": "1", "AETHER_CREDENTIALS": str(credentials.CREDENTIALS), **p.env}
        blocks.append(program_tmpl.substitute(
            name=p.name, root=str(ROOT), log_dir=str(log_dir),
            command=" ".join(shlex.quote(c) for c in p.command).replace("%", "%%"),
            autostart="true" if p.infra else "false",  # the scripts start the services once the stores are up
            autorestart="false" if p.oneshot else "true",
            startsecs=0 if p.oneshot else 5 if p.infra else 3, priority=p.priority, stopsignal=p.stopsignal,
            stopwaitsecs=p.stopwaitsecs, kill_group="true" if p.kill_group else "false",
            environment=_sv_env(env),
            user_line=f"user={PG_OS_USER}" if (p.infra and as_root) else ""))
    return Template((DEPLOY / "supervisord.conf.tmpl").read_text()).substitute(
        root=str(ROOT), log_dir=str(log_dir), run_dir=str(run_dir), programs="".join(blocks))


def _own(path: Path, as_root: bool) -> None:
    if as_root:
        ent = pwd.getpwnam(PG_OS_USER)
        os.chown(path, ent.pw_uid, ent.pw_gid)


def prepare_dirs(progs: list[stack.Program], as_root: bool) -> None:
    """Folders with the owners and modes the programs need; PostgreSQL's and NATS's private to their account."""
    if as_root:
        ensure_os_user(PG_OS_USER)
    # .aether/agent: the agents' work folders; jobs run as another user and must be able to pass through.
    for d, mode in [(stack.STATE, 0o755), (stack.STATE / "data", 0o755), (RUN_DIR, 0o755), (LOG_DIR, 0o750),
                    (stack.STATE / "agent", 0o755)]:
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, mode)
    for d in [stack.PG_DATA, stack.PG_SOCKET_DIR, stack.NATS_STORE, stack.NATS_CONF.parent]:
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        _own(d, as_root)
    for p in progs:
        (LOG_DIR / p.name).mkdir(exist_ok=True)
    (LOG_DIR / "supervisord").mkdir(exist_ok=True)


def render() -> list[str]:
    """Write both configuration files; returns the supervised program names."""
    as_root = os.geteuid() == 0
    progs = [p for p in stack.programs() if p.present()]
    prepare_dirs(progs, as_root)
    creds = read_env_file(credentials.CREDENTIALS)
    missing = [k for k in ("NATS_USER", "NATS_PASSWORD", "NATS_READONLY_USER", "NATS_READONLY_PASSWORD")
               if not creds.get(k)]
    if missing:
        raise SystemExit(f"{credentials.CREDENTIALS} lacks {', '.join(missing)}: run scripts/credentials.py ensure")
    nodes = {}
    for node, _ in stack.agent_nodes():
        credentials.ensure_node(node)
    for path in sorted(credentials.NODES.glob("*.env")):  # every node ever given an account, not only local ones
        nodes[path.stem] = read_env_file(path)
    credentials.write_private(stack.NATS_CONF, local_nats_config(creds, nodes))
    _own(stack.NATS_CONF, as_root)
    credentials.write_private(SUPERVISOR_CONF, supervisor_config(progs, as_root))
    return [p.name for p in progs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--compose", action="store_true", help=f"write {COMPOSE_NATS_CONF.relative_to(ROOT)} instead")
    if ap.parse_args(argv).compose:
        COMPOSE_NATS_CONF.write_text(compose_nats_config())
        print(f"wrote {COMPOSE_NATS_CONF.relative_to(ROOT)}")
        return 0
    names = render()
    print(f"rendered {SUPERVISOR_CONF.relative_to(ROOT)} ({' '.join(names)}) and {stack.NATS_CONF.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
