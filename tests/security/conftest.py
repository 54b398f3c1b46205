"""One secured cluster for the security tests: nats-server with the authentication and per-subject permissions
setup.sh renders (scripts/render_config.py), the orchestrator as the service user with tenant tokens, and a real
agent as its node's user, started with secrets in its environment that no job may see."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.localstack import NatsServer, wait_for
from tests.faults.support import ROOT, agent, headers, start_orchestrator
from tests.support.procs import Service

if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

SERVICE = ("aether", "svc-password-" + uuid.uuid4().hex)
READONLY = ("aether-readonly", "ro-password-" + uuid.uuid4().hex)
# Secrets in the agent's environment: a job must see none of them (names or values).
AGENT_SECRETS = {"AETHER_API_TOKEN": "agent-env-api-token-" + uuid.uuid4().hex,
                 "DATABASE_URL": "postgresql://aether:db-secret-" + uuid.uuid4().hex + "@127.0.0.1/aether",
                 "AWS_SECRET_ACCESS_KEY": "aws-" + uuid.uuid4().hex, "MY_SERVICE_TOKEN": "tok-" + uuid.uuid4().hex}


@dataclass
class Secured:
    nats: NatsServer
    dsn: str
    orch: Service
    agent: Service
    node: str  # the running agent's node
    other: str  # a second node with credentials of its own and no agent running
    creds: dict[str, tuple[str, str]]  # node -> (user, password)
    logs: Path

    def user(self, node: str) -> tuple[str, str]:
        return self.creds[node]


@pytest.fixture(scope="package")
def secured(pg_server):
    import render_config  # scripts/render_config.py: the same rendering setup.sh uses

    logs = ROOT / "test-output" / "security"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):  # the secrets test reads whole files: no earlier run's lines
        old.unlink()
    node, other = "sec" + uuid.uuid4().hex[:8], "oth" + uuid.uuid4().hex[:8]
    creds = {n: (f"agent-{n}", f"agent-{n}-password-{uuid.uuid4().hex}") for n in (node, other)}
    store = Path(tempfile.mkdtemp(prefix="aether-sec-nats-"))
    conf = render_config.nats_config(SERVICE, READONLY, creds, listen="127.0.0.1:-1", monitor="127.0.0.1:-1",
                                     store_dir=str(store / "js"), server_name="aether-sec", passwords_from="test")
    # NatsServer passes the store folder on the command line (-sd); nats-server refuses it twice.
    conf = "\n".join(line for line in conf.splitlines() if not line.strip().startswith("store_dir:"))
    ns = NatsServer(store_dir=store / "js", config_text=conf).start()
    dsn = pg_server.create_database("sec_" + uuid.uuid4().hex[:8])
    orch = start_orchestrator(ns.url, dsn, logs / "orchestrator.log", NATS_USER=SERVICE[0], NATS_PASSWORD=SERVICE[1])
    # As in production, the agent makes its own work dir (0755): what jobs can reach is the agent's doing.
    work = Path(tempfile.mkdtemp(prefix="aether-sec-agent-"))
    os.chmod(work, 0o755)
    agt = agent(ns.url, node, logs, work_dir=work / "work",
                env={"NATS_USER": creds[node][0], "NATS_PASSWORD": creds[node][1], **AGENT_SECRETS})
    agt.start()
    try:
        wait_for(lambda: sum(1 for g in httpx.get(f"{orch.url}/v1/gpus", headers=headers(), timeout=5).json()
                             if g["healthy"] and g["node"] == node) == 2, 30, "the secured agent's GPUs placeable")
        yield Secured(ns, dsn, orch, agt, node, other, creds, logs)
    finally:
        agt.stop()
        orch.stop()
        ns.cleanup()
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
