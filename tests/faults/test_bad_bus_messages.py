"""Malformed, oversized, wrong-version and wrong-subject messages on every subject family a service consumes
(telemetry, heartbeats, job reports, agent commands, model updates) are dead-lettered with their subject and
reason, counted by the consumer, and block nothing: the well-formed message sent after them is processed."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import nats
import pytest
from nats.js.errors import APIError

from services import subjects
from services.bus import MAX_MESSAGE_BYTES, ensure_jobs_stream, ensure_telemetry_stream
from services.localstack import NatsServer
from services.schemas import (
    CommandReply,
    GpuInventory,
    Heartbeat,
    JobLogLine,
    JobState,
    JobStateEvent,
    ModelUpdated,
    SchedulerHint,
    TelemetryBatch,
    TelemetrySample,
)
from tests.faults.support import (
    agent,
    aget,
    ai_core,
    ametric,
    fetchval,
    headers,
    job_in,
    node_name,
    start_orchestrator,
    tiny_model,
    until,
)

pytestmark = pytest.mark.timeout(150)

BIG = b" " * (MAX_MESSAGE_BYTES + 1024)  # JSON whitespace: valid framing, over the contract's 1 MiB


def _batch(node: str, seq: int, gpus: int = 1, t: datetime | None = None) -> TelemetryBatch:
    t = t or datetime.now(UTC) - timedelta(seconds=5)
    return TelemetryBatch(node=node, seq=seq, time=t, samples=[
        TelemetrySample(time=t, node=node, gpu_index=i, gpu_uuid=f"GPU-{node}-{i}", name="NVIDIA H100 80GB HBM3",
                        util_gpu_pct=10, mem_total_mb=81559) for i in range(gpus)])


def _bump_version(data: bytes) -> bytes:
    body = json.loads(data)
    body["v"] = 2
    return json.dumps(body).encode()


def _heartbeat(node: str) -> Heartbeat:
    return Heartbeat(node=node, time=datetime.now(UTC), agent_version="test", interval_s=1.0,
                     gpus=[GpuInventory(uuid=f"GPU-{node}-0", index=0, name="NVIDIA H100 80GB HBM3",
                                        mem_total_mb=81559)])


async def test_bad_messages_on_every_subject_are_dead_lettered_and_counted(pg_server, output_dir, tmp_path):
    # max_payload 2 MB as in deploy/nats-server.conf.tmpl: a message over the contract's 1 MiB reaches the
    # consumers (core NATS) or is refused by the stream (JetStream), rather than by the client library.
    ns = NatsServer(config_text="max_payload: 2MB\n").start()
    dsn = pg_server.create_database("faults_bus_" + node_name())
    node = node_name("garb")
    tiny_model(tmp_path / "models")
    procs: list = []
    try:
        orch_task = asyncio.to_thread(start_orchestrator, ns.url, dsn, output_dir / "orchestrator.log")
        agt = agent(ns.url, node, output_dir, gpus=1)
        core = ai_core(tmp_path / "models", output_dir / "ai_core.log", nats_url=ns.url)
        orch, _, _ = await asyncio.gather(orch_task, asyncio.to_thread(agt.start), asyncio.to_thread(core.start))
        procs += [orch, agt, core]
        await _run(ns, orch, agt, core, node, dsn)
    finally:
        for p in reversed(procs):
            p.stop()
        ns.cleanup()


async def _run(ns, orch, agt, core, node: str, dsn: str) -> None:
    nc = await nats.connect(ns.url)
    js = nc.jetstream()
    letters: dict[str, list] = {}

    async def on_letter(msg):
        letters.setdefault(msg.subject.rsplit(".", 1)[1], []).append(msg)

    await nc.subscribe(f"{subjects.DEADLETTER_PREFIX}.>", cb=on_letter)
    await ensure_telemetry_stream(js)
    await ensure_jobs_stream(js)
    # The AI core subscribes to model updates once connected: wait so the bad updates are not sent to nobody.
    await until(lambda: _json_is(aget(f"{core.url}/health"), "nats", "connected"), 20, "the AI core's NATS subscription")
    await until(lambda: _eq(ametric(orch.url, "aether_scheduler_leader"), 1.0), 20, "the orchestrator to lead")

    # --- telemetry (JetStream, consumed by ingest) ---------------------------------------------------------
    victim = node_name("tv")
    good = _batch(victim, 2)
    too_many = json.loads(_batch(victim, 3).to_bytes())
    too_many["samples"] *= 1025  # over the 1,024 samples a batch may hold
    bad_telemetry = [
        (subjects.telemetry(victim), b'{"v": 1, "node": "'),  # malformed
        (subjects.telemetry(victim), _bump_version(_batch(victim, 1).to_bytes())),  # wrong version
        (subjects.telemetry(victim), _batch("someone-else", 1).to_bytes()),  # wrong subject
        (subjects.telemetry(victim), json.dumps(too_many).encode()),  # oversized in content
    ]
    for subject, data in bad_telemetry:
        await js.publish(subject, data)
    # Oversized in bytes: the stream refuses it at the door (max_msg_size), so nothing of it is ever stored.
    with pytest.raises(APIError) as refused:
        await js.publish(subjects.telemetry(victim), BIG)
    assert "maximum" in str(refused.value).lower() or refused.value.err_code == 10054
    await js.publish(subjects.telemetry(victim), good.to_bytes(), headers={"Nats-Msg-Id": good.msg_id()})

    # --- heartbeats (core NATS) ----------------------------------------------------------------------------
    ghost = node_name("hv")
    bad_heartbeats = [
        (subjects.heartbeat(ghost), b"not json at all"),
        (subjects.heartbeat(ghost), _bump_version(_heartbeat(ghost).to_bytes())),
        (subjects.heartbeat(ghost), _heartbeat("someone-else").to_bytes()),
        (subjects.heartbeat(ghost), BIG),
        # Valid JSON, but no text column can store a NUL: refused at the door, not at every upsert.
        (subjects.heartbeat(ghost), _heartbeat(ghost).to_bytes().replace(b'"test"', b'"te\\u0000st"')),
    ]
    for subject, data in bad_heartbeats:
        await nc.publish(subject, data)

    # --- job reports (JetStream, consumed by the scheduler's leader) ---------------------------------------
    now = datetime.now(UTC)
    state = JobStateEvent(job_id="jfeedfeedfeedfeed1", state=JobState.RUNNING, time=now, source="agent", node=node)
    bad_reports = [
        (subjects.job_report("jfeedfeedfeedfeed1", node), b"[1, 2"),
        (subjects.job_report("jfeedfeedfeedfeed1", node), _bump_version(state.to_bytes())),
        (subjects.job_report("jfeedfeedfeedfeed2", node), state.to_bytes()),  # job 1's state on job 2's subject
        (subjects.job_report("jfeedfeedfeedfeed1", "other-node"), state.to_bytes()),  # another node's subject
        # a scheduler hint about job 2 on job 1's subject
        (subjects.scheduler_hint("jfeedfeedfeedfeed1"),
         SchedulerHint(job_id="jfeedfeedfeedfeed2", state=JobState.PENDING, time=now).to_bytes()),
        (subjects.job_log("jfeedfeedfeedfeed1", node),
         JobLogLine(job_id="jfeedfeedfeedfeed2", seq=0, stream="stdout", line="x", time=now).to_bytes()),
    ]
    for subject, data in bad_reports:
        await js.publish(subject, data)

    # --- agent commands (request/reply) ---------------------------------------------------------------------
    bad_commands = [
        (subjects.cmd(node, "run"), b"{"),
        (subjects.cmd(node, "run"), json.dumps({"v": 2, "job_id": "jx", "spec": {}, "gpu_indices": [0],
                                                "gpu_uuids": []}).encode()),
        (subjects.cmd(node, "cancel"), b'{"v": 1}'),
        (subjects.cmd(node, "run"), BIG),
    ]
    replies = [CommandReply.model_validate_json((await nc.request(s, d, timeout=10)).data) for s, d in bad_commands]
    assert [(r.ok, r.code) for r in replies] == [(False, "MALFORMED_MESSAGE")] * len(bad_commands)

    # --- model updates (core NATS, consumed by the AI core) -------------------------------------------------
    bad_updates = [
        (subjects.MODEL_UPDATED, b"\x00\x01binary"),
        (subjects.MODEL_UPDATED, _bump_version(ModelUpdated(version="v-1", time=now).to_bytes())),
        (subjects.MODEL_UPDATED, json.dumps({"v": 1, "version": "../../etc/passwd",
                                             "time": now.isoformat()}).encode()),  # path traversal as a version
    ]
    for subject, data in bad_updates:
        await nc.publish(subject, data)
    await nc.flush()

    expected = {"telemetry": bad_telemetry, "heartbeat": bad_heartbeats, "jobs": bad_reports,
                "agent": bad_commands, "model": bad_updates}
    await until(lambda: all(len(letters.get(k, [])) == len(v) for k, v in expected.items()), 30,
                "every bad message dead-lettered", interval=0.1)
    for kind, sent in expected.items():
        got = letters[kind]
        assert sorted(m.headers["Aether-Original-Subject"] for m in got) == sorted(s for s, _ in sent), kind
        assert all(m.headers["Aether-Reason"] for m in got), kind
        # The original bytes are kept (cut to the contract's limit): an operator can see what was sent.
        assert sorted(m.data for m in got) == sorted(d[:MAX_MESSAGE_BYTES] for _, d in sent), kind
    reasons = " | ".join(m.headers["Aether-Reason"] for ms in letters.values() for m in ms)
    for fragment in ("someone-else", "samples", "bytes, over", "jfeedfeedfeedfeed1"):
        assert fragment in reasons

    # Each consumer counted exactly what it set aside.
    assert await ametric(orch.url, "aether_ingest_malformed_total") == len(bad_telemetry)
    assert await ametric(orch.url, "aether_heartbeats_malformed_total") == len(bad_heartbeats)
    assert await ametric(orch.url, "aether_job_reports_malformed_total") == len(bad_reports)
    assert await ametric(agt.url, "aether_agent_malformed_messages_total") == len(bad_commands)
    assert await ametric(core.url, "aether_ai_core_malformed_messages_total") == len(bad_updates)

    # A heartbeat valid by the schema but beyond what the table holds (a GPU index over int32) must not stop
    # heartbeats from being stored: the next node's heartbeat still reaches the database.
    odd, later = node_name("odd"), node_name("later")
    huge = _heartbeat(odd)
    huge.gpus[0].index = 2**40
    await nc.publish(subjects.heartbeat(odd), huge.to_bytes())
    await nc.publish(subjects.heartbeat(later), _heartbeat(later).to_bytes())
    await nc.flush()
    await until(lambda: fetchval(dsn, "SELECT count(*) FROM nodes WHERE name = $1", later), 20,
                "a heartbeat after the out-of-range one stored")

    # A job that prints a NUL byte (binary output): its line is kept (U+FFFD), and job reports keep flowing.
    async with httpx.AsyncClient(base_url=orch.url, headers=headers(), timeout=10) as c:
        ids = []
        for cmd in (["printf", "a\\0b\\n"], ["true"]):
            r = await c.post("/v1/jobs", json={"name": "binary-out", "command": cmd})
            assert r.status_code == 201, r.text
            ids.append(r.json()["job_id"])
        for jid in ids:
            await until(lambda jid=jid: job_in(c, jid, "SUCCEEDED"), 30, f"job {jid} to succeed")
        lines = (await c.get(f"/v1/jobs/{ids[0]}/logs")).json()["lines"]
        assert [ln["line"] for ln in lines] == ["a\ufffdb"]

    # Nothing was blocked and nothing of the bad ones was taken in: the good batch behind them is stored, the
    # ghost node never joined, the bad model version was not loaded, every service is still up.
    async def stored():
        async with httpx.AsyncClient(timeout=5) as c:
            gpus = (await c.get(f"{orch.url}/v1/gpus", headers=headers())).json()
        return [g for g in gpus if g["node"] == victim and g.get("sample")]

    await until(stored, 20, "the good telemetry batch behind the bad ones")
    nodes = (await aget(f"{orch.url}/v1/nodes", headers=headers())).json()
    assert ghost not in {n["name"] for n in nodes}
    assert (await aget(f"{core.url}/health")).json()["model_loaded"] is True
    assert (await aget(f"{core.url}/v1/model")).json()["version"] != "../../etc/passwd"
    for svc in (orch, agt, core):
        assert svc.proc.poll() is None and (await aget(f"{svc.url}/health")).status_code == 200
    # The bad ones were acked: none waits to be redelivered. (The live agent's batch of this second may be in
    # flight at any one look, so wait for a look with nothing pending; a bad one left unacked never clears.)
    async def nothing_pending():
        return (await js.consumer_info(subjects.TELEMETRY_STREAM, "aether-ingest")).num_ack_pending == 0
    await until(nothing_pending, 10, "no telemetry message left unacknowledged")
    await nc.close()


async def _eq(value, expected) -> bool:
    return await value == expected


async def _json_is(response, key: str, expected) -> bool:
    return (await response).json().get(key) == expected
