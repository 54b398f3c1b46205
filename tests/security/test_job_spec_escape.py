"""Job specs that try to escape — path traversal in names, huge or privileged environments, absurd durations,
negative or enormous GPU counts, pip options, NUL bytes, unknown fields — are refused with 422 INVALID_JOB naming
the field, and nothing is stored. The agent checks again what reaches it directly over the bus."""

from __future__ import annotations

import json
import uuid

import httpx
import nats
import pytest

from services import subjects
from services.schemas import CommandReply
from tests.faults.support import headers, work_dir_of
from tests.security.conftest import SERVICE

pytestmark = pytest.mark.timeout(120)

TENANT = "escape-" + uuid.uuid4().hex[:6]
OK = {"name": "fine", "command": ["true"], "tenant": TENANT}

# (what is tried, the fields changed, the field the refusal must name)
CASES = [
    ("traversal in the name", {"name": "../../etc/passwd"}, "name"),
    ("slash in the name", {"name": "a/b"}, "name"),
    ("hidden name", {"name": ".bashrc"}, "name"),
    ("dot-dot inside the name", {"name": "a..b"}, "name"),
    ("newline in the name", {"name": "a\nb"}, "name"),
    ("name too long", {"name": "n" * 129}, "name"),
    ("huge env", {"env": {"BIG": "x" * 40_000}}, "env"),
    ("too many env vars", {"env": {f"V{i}": "1" for i in range(129)}}, "env"),
    ("LD_PRELOAD", {"env": {"LD_PRELOAD": "/tmp/evil.so"}}, "env"),
    ("PATH", {"env": {"PATH": "/tmp/evil"}}, "env"),
    ("GPU pinning", {"env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}}, "env"),
    ("the agent's NATS credentials", {"env": {"NATS_PASSWORD": "x"}}, "env"),
    ("another job's identity", {"env": {"AETHER_JOB_ID": "jdeadbeefdeadbeef"}}, "env"),
    ("an env name with '='", {"env": {"A=B": "x"}}, "env"),
    ("NUL in an env value", {"env": {"A": "x\x00y"}}, "env"),
    ("a billion seconds", {"max_duration_s": 10**9}, "max_duration_s"),
    ("zero seconds", {"max_duration_s": 0}, "max_duration_s"),
    ("negative seconds", {"max_duration_s": -1}, "max_duration_s"),
    ("negative GPUs", {"gpus": -1}, "gpus"),
    ("zero GPUs", {"gpus": 0}, "gpus"),
    ("a million GPUs", {"gpus": 10**6}, "gpus"),
    ("GPUs beyond int64", {"gpus": 2**70}, "gpus"),
    ("negative memory", {"gpu_mem_mb": -1}, "gpu_mem_mb"),
    ("a petabyte of GPU memory", {"gpu_mem_mb": 2**40}, "gpu_mem_mb"),
    ("absurd priority", {"priority": 10**6}, "priority"),
    ("pip reading local files", {"requirements": ["-r /etc/shadow"]}, "requirements"),
    ("pip from anywhere", {"requirements": ["--index-url=http://evil.example/simple"]}, "requirements"),
    ("pip options after a newline", {"requirements": ["numpy\n--extra-index-url=http://evil.example"]},
     "requirements"),
    ("empty command", {"command": []}, "command"),
    ("blank program", {"command": [" "]}, "command"),
    ("NUL in an argument", {"command": ["sh", "-c", "x\x00y"]}, "command"),
    ("an argument of 5,000 characters", {"command": ["a" * 5000]}, "command"),
    ("257 arguments", {"command": ["true"] * 257}, "command"),
    ("NUL in the model", {"model": "llama\x00"}, "model"),
    ("NUL in the image", {"image": "ubuntu\x00"}, "image"),
    ("traversal in the tenant", {"tenant": "../red"}, "tenant"),
    ("unknown field", {"privileged": True}, "privileged"),
    ("unknown field: user", {"user": "root"}, "user"),
    ("another schema version", {"v": 2}, "v"),
    ("unknown job type", {"job_type": "root"}, "job_type"),
]


@pytest.mark.parametrize("what,change,field", CASES, ids=[c[0] for c in CASES])
def test_escaping_spec_is_refused_naming_the_field(secured, what, change, field):
    r = httpx.post(f"{secured.orch.url}/v1/jobs", json={**OK, **change}, headers=headers(), timeout=10)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "INVALID_JOB" and body["field"].split(".")[0] == field, body


def test_bodies_that_are_not_specs(secured):
    url = f"{secured.orch.url}/v1/jobs"
    big = json.dumps({**OK, "script": "#" * (2 * 1024 * 1024), "command": None}).encode()
    r = httpx.post(url, content=big, headers={**headers(), "content-type": "application/json"}, timeout=20)
    assert (r.status_code, r.json()["code"]) == (413, "PAYLOAD_TOO_LARGE")
    for raw in (b"", b"{not json", b"[]", b"null", b'"a string"'):
        r = httpx.post(url, content=raw, headers={**headers(), "content-type": "application/json"}, timeout=10)
        assert (r.status_code, r.json()["code"]) == (422, "INVALID_JOB"), raw
    r = httpx.post(url, json=OK, headers={**headers(), "Idempotency-Key": "k" * 200}, timeout=10)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (422, "INVALID_JOB", "Idempotency-Key")
    # None of the refused submissions left a job behind.
    listed = httpx.get(f"{secured.orch.url}/v1/jobs", params={"tenant": TENANT}, headers=headers(), timeout=10)
    assert listed.json() == []


async def test_the_agent_checks_again_what_reaches_it_directly(secured):
    """Straight to the agent over the bus (as only the services may): an unsafe job id, GPUs it does not have,
    and a spec the orchestrator would have refused are all refused by the agent, and nothing is created."""
    jobs_dir = work_dir_of(secured.agent) / "jobs"
    before = set(jobs_dir.iterdir()) if jobs_dir.exists() else set()
    spec = {"name": "direct", "command": ["true"]}
    cases = [
        ({"job_id": "../../../../tmp/aether-escape", "spec": spec, "gpu_indices": [0], "gpu_uuids": []},
         "JOB_REJECTED"),
        ({"job_id": "jvalid0000000001", "spec": spec, "gpu_indices": [7], "gpu_uuids": []}, "JOB_REJECTED"),
        ({"job_id": "jvalid0000000002", "spec": spec, "gpu_indices": [0], "gpu_uuids": ["GPU-not-this-one"]},
         "JOB_REJECTED"),
        ({"job_id": "jvalid0000000003", "spec": {**spec, "env": {"LD_PRELOAD": "/tmp/evil.so"}},
          "gpu_indices": [0], "gpu_uuids": []}, "MALFORMED_MESSAGE"),
    ]
    nc = await nats.connect(secured.nats.url, user=SERVICE[0], password=SERVICE[1])
    try:
        for body, code in cases:
            msg = await nc.request(subjects.cmd(secured.node, "run"), json.dumps({"v": 1, **body}).encode(),
                                   timeout=10)
            reply = CommandReply.model_validate_json(msg.data)
            assert (reply.ok, reply.code) == (False, code), (body["job_id"], reply)
    finally:
        await nc.close()
    after = set(jobs_dir.iterdir()) if jobs_dir.exists() else set()
    assert after == before
    assert not list(work_dir_of(secured.agent).parent.parent.glob("aether-escape*"))
