"""Telemetry and heartbeats against a real nats-server: batches land in JetStream under de-duplicating ids, a
heartbeat comes at once, NATS going away is buffered (bounded, oldest dropped, counted) and drained after."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import orjson
import pytest

from agent.metrics import AgentMetrics
from agent.nvml import NvmlSource
from services import subjects
from services.localstack import free_port
from services.schemas import FaultCommand, TelemetryBatch
from tests.agent.fake_nvml import FakeDevice, FakeNvml
from tests.agent.helpers import Collector, client, running_agent, settings, until, work_dir


@pytest.fixture
def wd():
    path = work_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def stream_batches(js, node: str) -> list[tuple[TelemetryBatch, str]]:
    """Every batch of `node` stored in the telemetry stream, with its Nats-Msg-Id."""
    info = await js.stream_info(subjects.TELEMETRY_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.TELEMETRY_STREAM, seq)
        if msg.subject == subjects.telemetry(node):
            out.append((TelemetryBatch.model_validate_json(msg.data), msg.headers["Nats-Msg-Id"]))
    return out


async def stored(js, node: str) -> int:
    try:
        return len(await stream_batches(js, node))
    except Exception:
        return 0


async def test_batches_land_in_jetstream_with_dedup_ids(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd, gpus=3)):
        js = nc.jetstream()
        for _ in range(200):  # poll the stream with a deadline
            if await stored(js, unique_node) >= 3:
                break
            await asyncio.sleep(0.05)
        batches = await stream_batches(js, unique_node)
        assert len(batches) >= 3
        for batch, msg_id in batches:
            assert msg_id == batch.msg_id()
            assert [s.gpu_index for s in batch.samples] == [0, 1, 2]
            assert all(s.node == unique_node and s.healthy for s in batch.samples)
        seqs = [b.seq for b, _ in batches]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # A retried publish (same id) is not stored twice.
        first, first_id = batches[0]
        before = (await js.stream_info(subjects.TELEMETRY_STREAM)).state.last_seq
        ack = await js.publish(subjects.telemetry(unique_node), first.to_bytes(), headers={"Nats-Msg-Id": first_id})
        assert ack.duplicate is True and ack.seq < before + 100


async def test_heartbeat_at_start_with_inventory(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc:
        beats = await Collector().subscribe(nc, subjects.heartbeat(unique_node))
        s = settings(nats_server.url, unique_node, wd, heartbeat_s=300, interval_s=0.5, gpu_model="L4")
        async with running_agent(s) as agent:
            hb = (await until(lambda: beats.messages, what="heartbeat at start"))[0]
            # reconcile: the orchestrator asks, a fresh heartbeat answers
            reply = orjson.loads((await nc.request(subjects.cmd(unique_node, "reconcile"), b"{}", timeout=5)).data)
            await until(lambda: len(beats.messages) == 2, what="heartbeat on reconcile")
            assert agent.metrics.registry.get_sample_value("aether_agent_heartbeats_total") == 2
    assert reply["ok"] is True
    assert (hb["node"], hb["simulated"], hb["interval_s"], hb["running_jobs"]) == (unique_node, True, 0.5, [])
    assert [(g["index"], g["name"], g["mem_total_mb"], g["healthy"]) for g in hb["gpus"]] == [
        (0, "NVIDIA L4", 23034, True), (1, "NVIDIA L4", 23034, True)]
    assert hb["agent_version"] and hb["started_at"] and hb["hostname"]


async def test_nats_outage_is_buffered_bounded_and_drained(nats_server, unique_node, wd):
    s = settings(nats_server.url, unique_node, wd, interval_s=0.1, buffer_max_batches=5, publish_timeout_s=0.5)
    async with running_agent(s) as agent:
        async with client(nats_server.url) as nc:
            js = nc.jetstream()
            for _ in range(200):
                if await stored(js, unique_node) >= 2:
                    break
                await asyncio.sleep(0.05)
        nats_server.stop()
        await until(lambda: agent.telemetry.dropped >= 3, what="oldest batches dropped from the full buffer")
        assert len(agent.telemetry) <= 5
        nats_server.start()  # same port, same JetStream store
        await until(lambda: agent.nc.is_connected, within=15, what="agent reconnected")
        await until(lambda: len(agent.telemetry) == 0, within=15, what="buffer drained")
        async with client(nats_server.url) as nc:
            batches = await stream_batches(nc.jetstream(), unique_node)
        dropped = agent.telemetry.dropped
        metric = agent.metrics.registry.get_sample_value("aether_agent_buffer_dropped_total", {"outbox": "telemetry"})
        last_seq = agent.sampler.seq - 1
    seqs = [b.seq for b, _ in batches]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, nothing stored twice
    missing = set(range(seqs[0], max(seqs) + 1)) - set(seqs)
    assert dropped == metric >= 3
    # What is missing is what was dropped and counted (one fewer if the server stored the publish in flight
    # at the moment it stopped, whose ack never came back).
    assert dropped - 1 <= len(missing) <= dropped
    assert max(seqs) >= last_seq - 5


async def test_fault_injection_over_nats(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)) as agent:
        async def fault(payload: bytes) -> dict:
            return orjson.loads((await nc.request(subjects.cmd(unique_node, "fault"), payload, timeout=5)).data)

        ok = await fault(FaultCommand(fault="xid", gpu_index=1, xid=31).to_bytes())
        lost = await fault(FaultCommand(fault="fall_off_bus", gpu_index=0).to_bytes())
        bad = await fault(b'{"fault": "melt"}')
        missing = await fault(FaultCommand(fault="xid", gpu_index=5).to_bytes())
        samples = await until(lambda: [s for s in agent.sampler.last_samples if not s.healthy],
                              what="GPU 0 reported lost")
        await until(lambda: agent.health()["unhealthy_gpus"] == [0], what="health shows the lost GPU")
    assert ok["ok"] and "xid" in ok["message"] and lost["ok"]
    assert (bad["ok"], bad["code"]) == (False, "MALFORMED_MESSAGE")
    assert (missing["ok"], missing["code"]) == (False, "INVALID_FAULT")
    assert samples[0].gpu_index == 0 and "GPU_IS_LOST" in samples[0].error
    assert agent.metrics.registry.get_sample_value("aether_agent_faults_injected_total", {"fault": "xid"}) == 1


async def test_nvml_node_on_the_bus_health_and_metrics(nats_server, unique_node, wd):
    devs = [FakeDevice(0, "GPU-n0"), FakeDevice(1, "GPU-n1", unsupported={"fan"})]
    port = free_port()
    metrics = AgentMetrics()
    with FakeNvml(devs):
        src = NvmlSource.open(unique_node, metrics)
        s = settings(nats_server.url, unique_node, wd, simulated=False, http_port=port)
        async with client(nats_server.url) as nc:
            tele = await Collector().subscribe(nc, subjects.telemetry(unique_node))
            async with running_agent(s, src, metrics) as agent:
                await until(lambda: len(tele.messages) >= 2, what="telemetry from the NVML node")
                reply = orjson.loads((await nc.request(subjects.cmd(unique_node, "fault"),
                                                       FaultCommand(fault="xid").to_bytes(), timeout=5)).data)
                devs[1].lost = True
                await until(lambda: agent.health()["unhealthy_gpus"] == [1], what="lost GPU in health")
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    health = await http.get("/health")
                    text = (await http.get("/metrics")).text
    batch = tele.messages[-1]
    assert [x["gpu_uuid"] for x in batch["samples"]] == ["GPU-n0", "GPU-n1"]
    assert (reply["ok"], reply["code"]) == (False, "FAULT_INJECTION_UNAVAILABLE")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["nats_connected"] is True and health.json()["simulated"] is False
    assert 'aether_agent_nvml_errors_total{error="gpu_is_lost",field="device"} 1.0' in text
    assert 'aether_agent_nvml_errors_total{error="not_supported",field="fan"} 1.0' in text
    for name in ("aether_agent_samples_published_total", "aether_agent_publish_errors_total",
                 "aether_agent_buffer_dropped_total", "aether_agent_jobs_running", "aether_agent_tick_lag_seconds"):
        assert name in text
    published = [ln for ln in text.splitlines() if ln.startswith("aether_agent_samples_published_total ")]
    assert float(published[0].split()[1]) >= 2


async def test_deleted_stream_is_created_again(nats_server, unique_node, wd):
    async with client(nats_server.url) as nc, running_agent(settings(nats_server.url, unique_node, wd)) as agent:
        js = nc.jetstream()
        await js.delete_stream(subjects.TELEMETRY_STREAM)  # as after a nats-server restart on an empty store
        published = agent.telemetry.published
        await until(lambda: agent.telemetry.published > published + 2, what="publishing resumed")
        assert await stored(js, unique_node) >= 2
