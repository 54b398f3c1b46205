"""A job runs unprivileged, in a private working directory, with the environment it was given and nothing of the
agent's: no NATS credentials, no tokens, no secrets; it cannot read root's files, the agent's state or the agent's
environment, nor signal the agent; and, each job having its own uid, another job's environment or files."""

from __future__ import annotations

import os
import pwd
import tempfile
from pathlib import Path

import httpx
import pytest

from agent.settings import AgentSettings
from tests.faults.support import FINAL_JOB_STATES, headers, job_in, until, work_dir_of
from tests.security.conftest import AGENT_SECRETS

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="jobs switch to an unprivileged user only under a root "
                                                          "agent; as non-root they run as the agent's own user")]

PROBE = r"""
import json, os
def attempt(fn):
    try:
        fn()
        return "allowed"
    except Exception as exc:
        return type(exc).__name__
agent = int(os.environ["PROBE_AGENT_PID"])
st = os.stat(os.getcwd())
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd(),
    "dir_mode": st.st_mode & 0o777, "dir_uid": st.st_uid,
    "env": dict(os.environ),
    "read_root_secret": attempt(lambda: open(os.environ["PROBE_SECRET"], "rb").read(1)),
    "read_agent_state": attempt(lambda: open(os.environ["PROBE_STATE"], "rb").read(1)),
    "read_agent_environ": attempt(lambda: open(f"/proc/{agent}/environ", "rb").read(1)),
    "signal_agent": attempt(lambda: os.kill(agent, 0)),
    "write_outside": attempt(lambda: open(os.environ["PROBE_OUTSIDE"], "w").write("x")),
}))
"""


@pytest.fixture
def root_secret():
    folder = Path(tempfile.mkdtemp(prefix="aether-root-secret-"))
    os.chmod(folder, 0o755)  # reachable: what stops the job is the file's own mode
    path = folder / "credentials.env"
    path.write_text("NATS_PASSWORD=root-only\n")
    os.chmod(path, 0o600)
    yield path
    path.unlink()
    folder.rmdir()


async def test_job_runs_unprivileged_without_the_agents_secrets(secured, root_secret):
    state = work_dir_of(secured.agent) / "jobs.json"
    outside = Path(secured.logs) / "written-by-a-job"
    env = {"PROBE_AGENT_PID": str(secured.agent.proc.pid), "PROBE_SECRET": str(root_secret),
           "PROBE_STATE": str(state), "PROBE_OUTSIDE": str(outside), "MY_SETTING": "given-by-the-submitter"}
    async with httpx.AsyncClient(base_url=secured.orch.url, headers=headers("red"), timeout=10) as c:
        r = await c.post("/v1/jobs", json={"name": "probe", "script": PROBE, "env": env})
        assert r.status_code == 201, r.text
        jid = r.json()["job_id"]
        job = await until(lambda: job_in(c, jid, *FINAL_JOB_STATES), 40, "the probe job to end")
    assert job["state"] == "SUCCEEDED", job
    got = job["result"]
    # Its own uid from the agent's pool (AGENT_JOB_UIDS), with a private group of the same number: no account of
    # the host's, no supplementary group of root's.
    first, last = (int(x) for x in AgentSettings.model_fields["job_uids"].default.split("-"))
    assert first <= got["uid"] <= last and got["uid"] == got["euid"] == got["gid"], got["uid"]
    assert set(got["groups"]) <= {got["gid"]}, "root's supplementary groups must be dropped"
    with pytest.raises(KeyError):
        pwd.getpwuid(got["uid"])
    assert got["env"]["USER"] == f"aether-job-{got['uid']}"
    # Its own private directory.
    assert got["cwd"] == got["env"]["AETHER_JOB_DIR"] == got["env"]["HOME"]
    assert got["dir_mode"] == 0o700 and got["dir_uid"] == got["uid"]
    # The environment it was given, and nothing of the agent's.
    job_env = got["env"]
    assert job_env["MY_SETTING"] == "given-by-the-submitter"
    assert job_env["CUDA_VISIBLE_DEVICES"] == str(job["gpu"]["index"])
    agent_env_names = {"NATS_USER", "NATS_PASSWORD", *AGENT_SECRETS}
    assert not agent_env_names & set(job_env), agent_env_names & set(job_env)
    values = "\n".join(job_env.values())
    assert not [v for v in [*AGENT_SECRETS.values(), *(pw for _, pw in secured.creds.values())] if v in values]
    # Nothing of root's or the agent's to read, nothing of the agent's to signal, nowhere else to write.
    for probe in ("read_root_secret", "read_agent_environ", "signal_agent", "write_outside"):
        assert got[probe] == "PermissionError", (probe, got[probe])
    assert got["read_agent_state"] in ("PermissionError", "FileNotFoundError"), got["read_agent_state"]
    assert not outside.exists()


SPY = r"""
import json, os, sys, time
target = os.environ["SPY_ON"]
found = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    if f"AETHER_JOB_ID={target}".encode() in environ:
        found = {"pid": int(pid), "secret": [e.decode() for e in environ if e.startswith(b"RED_API_KEY=")]}
        try:
            found["files"] = os.listdir(os.path.dirname(os.readlink(f"/proc/{pid}/cwd")) + "/" +
                                        os.path.basename(os.readlink(f"/proc/{pid}/cwd")))
        except OSError as exc:
            found["files"] = type(exc).__name__
        break
print(json.dumps(found))
"""


async def test_a_job_cannot_see_another_tenants_job(secured):
    """Each job runs as its own uid: another job can neither read its environment (/proc/<pid>/environ) nor
    look into its directory."""
    async with httpx.AsyncClient(base_url=secured.orch.url, timeout=10) as c:
        r = await c.post("/v1/jobs", json={"name": "red-holds-a-key", "command": ["sleep", "30"],
                                           "env": {"RED_API_KEY": "red-key-do-not-share"}}, headers=headers("red"))
        red = r.json()["job_id"]
        await until(lambda: job_in(c, red, "RUNNING"), 20, "red's job running")
        r = await c.post("/v1/jobs", json={"name": "blue-spy", "script": SPY, "env": {"SPY_ON": red}},
                         headers=headers("blue"))
        spy = await until(lambda: job_in(c, r.json()["job_id"], *FINAL_JOB_STATES), 40, "the spy job to end")
        await c.delete(f"/v1/jobs/{red}", headers=headers("red"))
    assert spy["state"] == "SUCCEEDED", spy
    assert spy["result"] == {}, f"blue's job found red's job: {spy['result']}"
