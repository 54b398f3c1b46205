"""On the secured bus (the permissions setup.sh renders) with the real orchestrator and agent running: an agent's
credentials publish only that node's telemetry and heartbeats and hear only that node's commands; forged traffic
is refused by the server and never reaches the database or the cluster; the read-only user reads and cannot
publish. Plus one gap, pinned: job state reports are not bound to the reporting node."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import nats
import pytest

from services import subjects
from services.schemas import GpuInventory, Heartbeat, JobState, JobStateEvent, TelemetryBatch, TelemetrySample
from tests.faults.support import aget, ametric, headers, job_in, stored_samples, until
from tests.security.conftest import READONLY, SERVICE

pytestmark = pytest.mark.timeout(120)


class Client:
    """A connection that records the asynchronous errors (permission violations) the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = None

    async def connect(self, url: str, user: str, password: str) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, user=user, password=password, error_cb=on_error, allow_reconnect=False,
                                     connect_timeout=3)
        return self

    async def refused(self, subject: str, within_s: float = 5.0) -> None:
        """Wait for the server's permissions violation naming `subject`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while loop.time() < deadline:
            if any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in self.errors):
                return
            await self.nc.flush(timeout=1)
        raise AssertionError(f"no permissions violation for {subject!r}; errors: {self.errors}")

    async def close(self) -> None:
        await self.nc.close()


def _batch(node: str) -> bytes:
    t = datetime.now(UTC)
    return TelemetryBatch(node=node, seq=1, time=t, samples=[TelemetrySample(
        time=t, node=node, gpu_index=0, gpu_uuid=f"GPU-forged-{node}", name="forged", util_gpu_pct=99)]).to_bytes()


def _heartbeat(node: str) -> bytes:
    return Heartbeat(node=node, time=datetime.now(UTC), agent_version="forged", interval_s=1.0, gpus=[
        GpuInventory(uuid=f"GPU-forged-{node}", index=0, name="forged", mem_total_mb=1e6)]).to_bytes()


async def test_wrong_or_missing_credentials_are_refused(secured):
    for kw in ({}, {"user": SERVICE[0], "password": "not-the-password-0123456789"},
               {"user": secured.user(secured.node)[0], "password": secured.user(secured.other)[1]}):
        with pytest.raises(Exception) as refused:
            await nats.connect(secured.nats.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0,
                               **kw)
        assert "authorization" in repr(refused.value).lower() or "NoServers" in repr(refused.value)


async def test_an_agent_cannot_speak_for_another_node(secured):
    """With node A's agent credentials (stolen, or a compromised node), try to be node B and to reach further."""
    a, b = secured.node, secured.other
    intruder = await Client().connect(secured.nats.url, *secured.user(a))
    try:
        forged = [(subjects.telemetry(b), _batch(b)), (subjects.heartbeat(b), _heartbeat(b)),
                  (subjects.cmd(b, "run"), b"{}"), (subjects.cmd(a, "cancel"), b"{}"),
                  (subjects.PLACEMENT, b"{}"), (subjects.MODEL_UPDATED, b"{}"), (subjects.CLUSTER, b"{}"),
                  # Job reports and output on B's subjects, or on the orchestrator's own.
                  (subjects.job_report("j00000000000000aa", b), b"{}"), (subjects.job_log("j00000000000000aa", b), b"{}"),
                  (subjects.job_state("j00000000000000aa"), b"{}"),
                  # JetStream: delete the telemetry stream, or bind to the orchestrator's durable consumer and
                  # take (ack away) the samples meant for the database.
                  (f"$JS.API.STREAM.DELETE.{subjects.TELEMETRY_STREAM}", b""),
                  (f"$JS.API.CONSUMER.MSG.NEXT.{subjects.TELEMETRY_STREAM}.aether-ingest", b"{}")]
        for subject, data in forged:
            await intruder.nc.publish(subject, data)
            await intruder.refused(subject)
        for subject in (subjects.cmd_all(b), subjects.HEARTBEAT_ALL, subjects.JOB_LOG_ALL):
            await intruder.nc.subscribe(subject)
            await intruder.refused(subject)
        assert intruder.nc.is_connected  # refused, not disconnected: its own node keeps working
    finally:
        await intruder.close()

    # Nothing forged got in: no rows, no node B, no GPU of B in the cluster; A's own telemetry still flows.
    await until(lambda: _rows(secured.dsn, a), 20, "the real agent's samples stored")
    assert (await stored_samples(secured.dsn, b))[0] == 0
    nodes = {n["name"] for n in (await aget(f"{secured.orch.url}/v1/nodes", headers=headers())).json()}
    gpus = {g["node"] for g in (await aget(f"{secured.orch.url}/v1/gpus", headers=headers())).json()}
    assert a in nodes and b not in nodes and b not in gpus


async def test_readonly_user_reads_live_data_and_publishes_nothing(secured):
    reader = await Client().connect(secured.nats.url, *READONLY)
    try:
        seen: list[str] = []

        async def record(msg):
            seen.append(msg.subject)

        await reader.nc.subscribe(subjects.TELEMETRY_ALL, cb=record)
        await reader.nc.subscribe(subjects.HEARTBEAT_ALL, cb=record)
        await until(lambda: {subjects.telemetry(secured.node), subjects.heartbeat(secured.node)} <= set(seen), 20,
                    "the reader to see the agent's telemetry and heartbeats")
        for subject, data in [(subjects.telemetry(secured.other), _batch(secured.other)),
                              (subjects.heartbeat(secured.node), _heartbeat(secured.node)),
                              (subjects.cmd(secured.node, "cancel"), b"{}"), (subjects.MODEL_UPDATED, b"{}"),
                              (f"$JS.API.STREAM.PURGE.{subjects.TELEMETRY_STREAM}", b"")]:
            await reader.nc.publish(subject, data)
            await reader.refused(subject)
        # Commands carry job specs (environments) and logs are tenants' output: not for tooling.
        for subject in (subjects.cmd_all(secured.node), subjects.JOB_LOG_ALL):
            await reader.nc.subscribe(subject)
            await reader.refused(subject)
    finally:
        await reader.close()


async def test_an_agent_cannot_report_on_another_nodes_job(secured):
    """With the other node's credentials, try to end a job running on the real agent's node with a result of the
    intruder's choosing: on the victim node's report subject (NATS refuses it), on the orchestrator's subject (NATS
    refuses it), and on the intruder's own subject naming the victim node in the body (the orchestrator refuses it:
    malformed, counted, dead-lettered). The job runs on, untouched."""
    async with httpx.AsyncClient(base_url=secured.orch.url, headers=headers("red"), timeout=10) as c:
        r = await c.post("/v1/jobs", json={"name": "victim-of-forgery", "command": ["sleep", "20"]})
        assert r.status_code == 201, r.text
        jid = r.json()["job_id"]
        job = await until(lambda: job_in(c, jid, "RUNNING"), 20, "the job running")
        before = await ametric(secured.orch.url, "aether_job_reports_malformed_total")
        intruder = await Client().connect(secured.nats.url, *secured.user(secured.other))
        try:
            forged = JobStateEvent(job_id=jid, state=JobState.SUCCEEDED, prev_state=JobState.RUNNING,
                                   time=datetime.now(UTC), source="agent", attempt=job["attempt"], node=job["node"],
                                   exit_code=0, result={"forged": True})
            for subject in (subjects.job_report(jid, job["node"]), subjects.job_state(jid),
                            subjects.scheduler_hint(jid)):
                await intruder.nc.publish(subject, forged.to_bytes())
                await intruder.refused(subject)
            ack = await intruder.nc.jetstream().publish(subjects.job_report(jid, secured.other), forged.to_bytes(),
                                                        timeout=5)
            assert ack.stream  # its own subject: the bus takes it, the orchestrator must not believe it
        finally:
            await intruder.close()
        await until(lambda: _counted_more(secured.orch.url, before), 10, "the forged report refused and counted")
        after = (await c.get(f"/v1/jobs/{jid}")).json()
        await c.delete(f"/v1/jobs/{jid}")
    assert after["state"] == "RUNNING" and after.get("result") != {"forged": True}, after


async def _counted_more(url: str, before: float) -> bool:
    return await ametric(url, "aether_job_reports_malformed_total") > before


async def _rows(dsn: str, node: str) -> int:
    return (await stored_samples(dsn, node))[0]
