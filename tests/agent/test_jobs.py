"""Jobs end to end against a real nats-server, without the orchestrator: dispatch by request/reply, collect the
state and log messages, check results, limits, cancel, duplicates, the job's environment and process groups."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import orjson
import psutil
import pytest

from services import subjects
from services.schemas import CancelCommand, DispatchCommand, JobSpec
from tests.agent.helpers import Collector, client, running_agent, settings, until, work_dir

ROOT = Path(__file__).resolve().parents[2]


def dispatch(job_id: str, gpus: list[int] | None = None, attempt: int = 1, uuids: list[str] | None = None,
             **spec) -> DispatchCommand:
    spec.setdefault("name", "t")
    return DispatchCommand(job_id=job_id, attempt=attempt, spec=JobSpec(**spec), gpu_indices=gpus or [0],
                           gpu_uuids=uuids or [])


async def request(nc, node: str, verb: str, payload: bytes) -> dict:
    reply = await nc.request(subjects.cmd(node, verb), payload, timeout=10)
    return orjson.loads(reply.data)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def final(states: Collector, job_id: str):
    done = [m for m in states.where(job_id=job_id) if m["state"] not in ("RUNNING",)]
    return done[-1] if done else None


@pytest.fixture
def wd():
    path = work_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_result_environment_and_logs(nats_server, unique_node, wd, monkeypatch):
    # Secrets in the agent's own environment, as a real deployment has them.
    monkeypatch.setenv("NATS_PASSWORD", "agent-nats-secret-123")
    monkeypatch.setenv("AETHER_API_TOKEN", "agent-api-token-456")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "passthrough-token-789")
    script = ("import json, os, sys\n"
              "print('hello from the job')\n"
              "print('warn', file=sys.stderr)\n"
              "print(json.dumps({'env': dict(os.environ), 'uid': os.getuid(), 'cwd': os.getcwd()}))\n")
    s = settings(nats_server.url, unique_node, wd, job_env_passthrough=["LANG", "MY_SERVICE_TOKEN"])
    async with client(nats_server.url) as nc, running_agent(s):
        states = await Collector().subscribe(nc, subjects.job_reports("job-env"))
        logs = await Collector().subscribe(nc, subjects.job_logs("job-env"))
        reply = await request(nc, unique_node, "run",
                              dispatch("job-env", [1], script=script, env={"MY_VAR": "x"}).to_bytes())
        assert reply == {"v": 1, "ok": True, "code": None, "message": "accepted", "job_id": "job-env"}
        await until(lambda: final(states, "job-env"), what="final state")
        await until(lambda: len(logs.messages) >= 3, what="log lines")
    running, done = states.messages
    assert (running["state"], running["prev_state"], running["source"], running["node"]) == (
        "RUNNING", "SCHEDULED", "agent", unique_node)
    assert running["pid"] > 0
    assert (done["state"], done["exit_code"], done["prev_state"]) == ("SUCCEEDED", 0, "RUNNING")
    result = done["result"]
    env = result["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["AETHER_JOB_ID"] == "job-env" and env["MY_VAR"] == "x"
    blob = orjson.dumps(env).decode()
    for secret in ("agent-nats-secret-123", "agent-api-token-456", "passthrough-token-789"):
        assert secret not in blob
    assert not any(k.startswith("NATS_") for k in env)
    assert result["cwd"] == env["HOME"] and result["cwd"].startswith(str(wd))
    if os.geteuid() == 0:
        assert result["uid"] != 0  # a root agent runs jobs as the unprivileged job user
    by_stream = {(m["stream"], m["line"]) for m in logs.messages}
    assert ("stdout", "hello from the job") in by_stream and ("stderr", "warn") in by_stream
    assert sorted(m["seq"] for m in logs.messages) == list(range(len(logs.messages)))


async def test_failure_reports_exit_code_and_stderr(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)):
        states = await Collector().subscribe(nc, subjects.job_reports("job-fail"))
        await request(nc, unique_node, "run",
                      dispatch("job-fail", command=["sh", "-c", "echo out; echo boom >&2; exit 3"]).to_bytes())
        done = await until(lambda: final(states, "job-fail"), what="final state")
        states2 = await Collector().subscribe(nc, subjects.job_reports("job-nocmd"))
        missing = await request(nc, unique_node, "run",
                                dispatch("job-nocmd", command=["/no/such/program"]).to_bytes())
        nocmd = await until(lambda: final(states2, "job-nocmd"), what="final state of a missing program")
    assert (done["state"], done["exit_code"]) == ("FAILED", 3)
    assert "exited with code 3" in done["error"] and "boom" in done["error"]
    assert missing["ok"] is True
    assert nocmd["state"] == "FAILED" and "cannot start" in nocmd["error"] and nocmd["prev_state"] == "SCHEDULED"


async def test_timeout_kills_the_whole_process_group(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)):
        states = await Collector().subscribe(nc, subjects.job_reports("job-slow"))
        logs = await Collector().subscribe(nc, subjects.job_logs("job-slow"))
        await request(nc, unique_node, "run", dispatch(
            "job-slow", max_duration_s=1, command=["sh", "-c", "sleep 300 & echo grandchild=$!; wait"]).to_bytes())
        line = await until(lambda: [m["line"] for m in logs.messages if m["line"].startswith("grandchild=")],
                           what="grandchild pid")
        grandchild = int(line[0].split("=")[1])
        assert not gone(grandchild)
        done = await until(lambda: final(states, "job-slow"), what="TIMED_OUT")
        await until(lambda: gone(grandchild), within=5, what="grandchild to be killed")
    assert done["state"] == "TIMED_OUT" and "max_duration_s=1" in done["reason"]
    assert done["exit_code"] == 128 + signal.SIGTERM


async def test_cancel_kills_group_and_escaped_descendants(nats_server, unique_node, wd):
    script = ("sh -c 'sleep 300 & echo grandchild=$!; setsid sleep 301 & echo escaped=$!; wait'")
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)):
        states = await Collector().subscribe(nc, subjects.job_reports("job-cancel"))
        logs = await Collector().subscribe(nc, subjects.job_logs("job-cancel"))
        await request(nc, unique_node, "run", dispatch("job-cancel", command=["sh", "-c", script]).to_bytes())
        await until(lambda: len([m for m in logs.messages if "=" in m["line"]]) == 2, what="both pids")
        pids = {m["line"].split("=")[0]: int(m["line"].split("=")[1]) for m in logs.messages if "=" in m["line"]}
        assert os.getpgid(pids["escaped"]) != states.messages[0]["pid"]  # it really left the job's group
        reply = await request(nc, unique_node, "cancel",
                              CancelCommand(job_id="job-cancel", reason="user asked").to_bytes())
        assert reply["ok"] is True
        done = await until(lambda: final(states, "job-cancel"), what="CANCELLED")
        await until(lambda: all(gone(p) for p in pids.values()), within=5, what="descendants killed")
        unknown = await request(nc, unique_node, "cancel", CancelCommand(job_id="nope").to_bytes())
        again = await request(nc, unique_node, "cancel", CancelCommand(job_id="job-cancel").to_bytes())
    assert (done["state"], done["reason"]) == ("CANCELLED", "user asked")
    assert (unknown["ok"], unknown["code"]) == (False, "JOB_NOT_FOUND")
    assert again["ok"] is True and "CANCELLED" in again["message"]


async def test_duplicate_dispatch_never_runs_twice(nats_server, unique_node, wd):
    cmd = dispatch("job-dup", command=["sh", "-c", "echo ran; sleep 0.5"])
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)) as agent:
        states = await Collector().subscribe(nc, subjects.job_reports("job-dup"))
        logs = await Collector().subscribe(nc, subjects.job_logs("job-dup"))
        replies = await asyncio.gather(*(request(nc, unique_node, "run", cmd.to_bytes()) for _ in range(3)))
        other_attempt = await request(nc, unique_node, "run",
                                      dispatch("job-dup", attempt=2, command=["true"]).to_bytes())
        await until(lambda: final(states, "job-dup"), what="final state")
        after = await request(nc, unique_node, "run", cmd.to_bytes())
        await until(lambda: len(states.messages) >= 3, what="final state re-sent")
        assert await agent.job_outbox.wait_empty(5)
    assert all(r["ok"] for r in replies) and sum(r["message"] == "accepted" for r in replies) == 1
    assert (other_attempt["ok"], other_attempt["code"]) == (False, "CONFLICT")
    assert after["ok"] and "already ran" in after["message"]
    assert [m["line"] for m in logs.messages].count("ran") == 1
    assert len(states.where(state="RUNNING")) == 1
    assert agent.metrics.registry.get_sample_value("aether_agent_duplicate_dispatches_total") == 3


async def test_refusals_and_malformed_dispatch(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)) as agent:
        dead = await Collector().subscribe(nc, "aether.deadletter.agent")
        bad = await request(nc, unique_node, "run", b'{"job_id": "x", "spec": {"name": "t"}}')
        garbage = await request(nc, unique_node, "run", b"\xff not json")
        no_gpu = await request(nc, unique_node, "run", dispatch("job-a", [7], command=["true"]).to_bytes())
        wrong_uuid = await request(nc, unique_node, "run",
                                   dispatch("job-b", [0], uuids=["GPU-other"], command=["true"]).to_bytes())
        unsafe = await request(nc, unique_node, "run", dispatch("../x", command=["true"]).to_bytes())
        image = await request(nc, unique_node, "run", dispatch("job-c", command=["true"], image="cuda:12").to_bytes())
        await until(lambda: len(dead.messages) == 2, what="dead letters")
    assert (bad["ok"], bad["code"]) == (False, "MALFORMED_MESSAGE")
    assert garbage["code"] == "MALFORMED_MESSAGE"
    assert dead.raw[0].headers["Aether-Original-Subject"] == subjects.cmd(unique_node, "run")
    assert (no_gpu["code"], wrong_uuid["code"], unsafe["code"], image["code"]) == ("JOB_REJECTED",) * 4
    assert "GPU index 7" in no_gpu["message"] and "Docker" in image["message"]
    assert agent.metrics.registry.get_sample_value("aether_agent_malformed_messages_total", {"verb": "run"}) == 2


async def test_simulated_gpu_follows_the_job(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)) as agent:
        states = await Collector().subscribe(nc, subjects.job_reports("job-load"))
        await request(nc, unique_node, "run", dispatch(
            "job-load", [1], gpu_mem_mb=30_000, expected_util_pct=90, job_type="training",
            command=["sleep", "30"]).to_bytes())
        await until(lambda: states.where(state="RUNNING"), what="RUNNING")
        pid = states.messages[0]["pid"]

        def loaded():
            s = agent.sampler.last_samples
            return len(s) == 2 and s[1].util_gpu_pct > 80 and s[1].mem_used_mb >= 30_000 and s[0].util_gpu_pct == 0

        await until(loaded, what="GPU 1 loaded by the job")
        assert [p.pid for p in agent.sampler.last_samples[1].processes] == [pid]
        assert agent.heartbeats.build().running_jobs == ["job-load"]
        await request(nc, unique_node, "cancel", CancelCommand(job_id="job-load").to_bytes())
        await until(lambda: final(states, "job-load"), what="cancelled")
        await until(lambda: agent.sampler.last_samples[1].util_gpu_pct == 0, what="GPU 1 idle again")


async def test_requirements_install_into_a_job_venv(nats_server, unique_node, wd):
    script = "import sys, json\nprint(json.dumps({'prefix': sys.prefix}))\n"
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)):
        states = await Collector().subscribe(nc, subjects.job_reports("job-req"))
        logs = await Collector().subscribe(nc, subjects.job_logs("job-req"))
        # `pip` is already in the new venv: satisfied without any network access.
        await request(nc, unique_node, "run", dispatch("job-req", script=script, requirements=["pip"]).to_bytes())
        done = await until(lambda: final(states, "job-req"), within=60, what="job with requirements")
    assert done["state"] == "SUCCEEDED", done
    assert done["result"]["prefix"].endswith(".venv") and done["result"]["prefix"].startswith(str(wd))
    assert any(m["stream"] == "system" and "already satisfied" in m["line"].lower() for m in logs.messages)


async def test_agent_stop_reports_running_jobs_lost(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc:
        states = await Collector().subscribe(nc, subjects.job_reports("job-stop"))
        async with running_agent(settings(nats_server.url, unique_node, wd)):
            await request(nc, unique_node, "run", dispatch("job-stop", command=["sleep", "300"]).to_bytes())
            await until(lambda: states.where(state="RUNNING"), what="RUNNING")
        pid = states.messages[0]["pid"]
        done = await until(lambda: final(states, "job-stop"), what="LOST")
    assert done["state"] == "LOST" and "agent stopped" in done["reason"]
    assert gone(pid)


async def test_restarted_agent_kills_orphan_and_reports_it_lost(nats_server, unique_node, wd):
    env = {**os.environ, "NATS_URL": nats_server.url, "AGENT_WORK_DIR": str(wd), "AGENT_HEARTBEAT_S": "0.5"}
    argv = [sys.executable, "-m", "agent", "--node", unique_node, "--simulated", "--gpus", "1", "--http-port", "0"]
    first = await asyncio.create_subprocess_exec(*argv, env=env, cwd=ROOT, stderr=asyncio.subprocess.DEVNULL)
    second = None
    try:
        async with client(nats_server.url) as nc:
            states = await Collector().subscribe(nc, subjects.job_reports("job-orphan"))
            beats = await Collector().subscribe(nc, subjects.heartbeat(unique_node))
            await until(lambda: beats.messages, within=20, what="first agent up")
            await request(nc, unique_node, "run", dispatch("job-orphan", command=["sleep", "300"]).to_bytes())
            await until(lambda: states.where(state="RUNNING"), what="RUNNING")
            pid = states.messages[0]["pid"]
            first.kill()  # SIGKILL: no chance to clean up
            await asyncio.wait_for(first.wait(), 10)
            assert not gone(pid)  # the job outlived its agent
            beats.messages.clear()
            second = await asyncio.create_subprocess_exec(*argv, env=env, cwd=ROOT,
                                                          stderr=asyncio.subprocess.DEVNULL)
            lost = await until(lambda: final(states, "job-orphan"), within=20, what="LOST after restart")
            await until(lambda: gone(pid), within=5, what="orphan killed")
            beat = await until(lambda: beats.messages, within=10, what="heartbeat of the new agent")
    finally:
        for p in (first, second):
            if p is not None and p.returncode is None:
                p.send_signal(signal.SIGTERM)
                await asyncio.wait_for(p.wait(), 20)
    assert lost["state"] == "LOST" and lost["prev_state"] == "RUNNING" and "restarted" in lost["reason"]
    assert beat[-1]["running_jobs"] == []


async def test_restart_finds_unrecorded_orphan_and_resends_undelivered_outcome(nats_server, unique_node, wd):
    # A job process whose pid the previous agent never recorded (it died right after starting it) ...
    orphan = await asyncio.create_subprocess_exec(
        "sleep", "300", start_new_session=True,
        env={"PATH": "/usr/bin:/bin", "AETHER_JOB_ID": "job-unrec", "AETHER_JOB_ATTEMPT": "1"})
    # ... and an outcome the previous agent could not deliver before it went down.
    undelivered = {"v": 1, "job_id": "job-done", "state": "SUCCEEDED", "prev_state": "RUNNING", "attempt": 1,
                   "time": "2026-01-01T00:00:00Z", "source": "agent", "node": unique_node, "exit_code": 0}
    (wd / "jobs.json").write_text(orjson.dumps({
        "v": 1, "running": {"job-unrec.1": {"job_id": "job-unrec", "attempt": 1, "pid": None, "create_time": None}},
        "history": {"job-done.1": undelivered}, "unsent": ["job-done.1"]}).decode())
    try:
        async with client(nats_server.url) as nc:
            lost = await Collector().subscribe(nc, subjects.job_reports("job-unrec"))
            resent = await Collector().subscribe(nc, subjects.job_reports("job-done"))
            async with running_agent(settings(nats_server.url, unique_node, wd)) as agent:
                await until(lambda: lost.messages and resent.messages, what="LOST and the re-sent outcome")
                await asyncio.wait_for(orphan.wait(), 10)  # killed by the new agent
                assert await agent.job_outbox.wait_empty(5)
                dup = await request(nc, unique_node, "run", dispatch("job-done", command=["true"]).to_bytes())
        state = orjson.loads((wd / "jobs.json").read_text())
    finally:
        if orphan.returncode is None:
            orphan.kill()
    assert (lost.messages[0]["state"], lost.messages[0]["prev_state"]) == ("LOST", "RUNNING")
    assert "processes were killed" in lost.messages[0]["reason"]
    assert resent.messages[0]["state"] == "SUCCEEDED" and resent.messages[0]["exit_code"] == 0
    assert dup["ok"] and "already ran" in dup["message"]  # still never run twice
    assert state["unsent"] == [] and state["running"] == {}
