"""Pieces of ingest that need no server: row layout, throttle masks, ack-subject parsing, query parameters, the
pull feed's accounting and the DCGM collector's output."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import throttle
from orchestrator.api.telemetry import parse_bucket, parse_fields, parse_time
from orchestrator.cluster import Cluster
from orchestrator.dcgm import DcgmExporter
from orchestrator.errors import InvalidRequest
from orchestrator.ingest import COLUMNS, _HeldConnection, sample_row, times_delivered
from orchestrator.pullfeed import PullFeed
from services.schemas import GpuInventory, GpuProcess, Heartbeat, TelemetryBatch
from tests.ingest.support import sample


def test_sample_row_follows_columns():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    s = sample("n1", 3, t, throttle_reasons=["power_cap", "sw_thermal"], xid_errors=[],
               processes=[GpuProcess(pid=42, used_mem_mb=512.0)], error=None)
    row = dict(zip(COLUMNS, sample_row(s), strict=True))
    assert row["time"] == t and row["gpu_uuid"] == "GPU-n1-3" and row["gpu_index"] == 3
    assert row["util_gpu_pct"] == s.util_gpu_pct and row["energy_mj"] == s.energy_mj
    assert row["throttle_mask"] == 0x004 | 0x020
    assert row["xid_errors"] is None  # empty lists are NULL: arrays are what COPY pays most for
    assert row["processes"] == '[{"pid":42,"used_mem_mb":512.0}]'
    assert dict(zip(COLUMNS, sample_row(sample("n1", 0, t, xid_errors=[13, 79])), strict=True))["xid_errors"] == \
        [13, 79]


def test_throttle_mask_round_trip():
    assert throttle.mask([]) == 0
    assert throttle.names(throttle.mask(["idle"])) == ["idle"]
    assert throttle.names(throttle.mask(["sw_thermal", "power_cap"])) == ["power_cap", "sw_thermal"]
    assert throttle.names(throttle.mask(["unknown_0x1000"])) == ["unknown_0x1000"]
    assert throttle.names(throttle.mask(["no-such-reason"])) == ["other"]


def test_times_delivered_from_ack_subject():
    v1 = SimpleNamespace(reply="$JS.ACK.AETHER_TELEMETRY.aether-ingest.3.120.118.1700000000000000000.5")
    v2 = SimpleNamespace(reply="$JS.ACK.hub.ACCHASH.AETHER_TELEMETRY.aether-ingest.2.120.118.1700000000000000000.5.tok")
    assert times_delivered(v1) == 3
    assert times_delivered(v2) == 2
    assert times_delivered(SimpleNamespace(reply="")) == 1


def test_query_parameters():
    assert parse_time("2026-01-01T00:00:00Z", "from") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2026-01-01T01:00:00+01:00", "from") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("1767225600", "to") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_bucket("5m") == 300 and parse_bucket("30s") == 30 and parse_bucket("90") == 90
    assert parse_bucket(None) is None and parse_bucket("raw") is None
    for bad in ("2026-01-01T00:00:00", "yesterday"):
        with pytest.raises(InvalidRequest) as e:
            parse_time(bad, "from")
        assert e.value.field == "from"
    for bad in ("0.5s", "5 weeks"):
        with pytest.raises(InvalidRequest):
            parse_bucket(bad)
    assert parse_fields("power_w,temp_c", bucketed=True) == ["power_w", "temp_c"]
    assert "processes" not in parse_fields(None, bucketed=False)
    with pytest.raises(InvalidRequest):
        parse_fields("processes", bucketed=True)


class _FakeNats:
    is_connected = True
    stats = {"reconnects": 0}

    def __init__(self):
        self.published: list[tuple[str, bytes, str]] = []

    def new_inbox(self):
        return "_INBOX.test"

    async def publish(self, subject, payload=b"", reply="", headers=None):
        self.published.append((subject, payload, reply))


def _msg(data=b"{}", reply="$JS.ACK.S.C.1.1.1.1.0", headers=None):
    return SimpleNamespace(data=data, reply=reply, headers=headers, subject="aether.telemetry.n1")


async def test_pull_feed_accounting():
    nc = _FakeNats()
    feed = PullFeed(nc, "S", "C", batch=10, credit=40, expires_s=30, heartbeat_s=5, keepalive_s=10)
    feed.outstanding = 40  # as if a request for the whole credit were out
    for _ in range(15):
        await feed._on_msg(_msg())
    assert feed.outstanding == 25 and feed.buffered == 15
    taken = await feed.take(10)
    assert len(taken) == 10 and feed.held_count == 10 and feed.buffered == 5
    # The request expired with 20 of its messages undelivered: they no longer count as outstanding.
    await feed._on_msg(_msg(data=b"", reply="", headers={"Status": "408", "Nats-Pending-Messages": "20"}))
    assert feed.outstanding == 5
    await feed._on_msg(_msg(data=b"", reply="", headers={"Status": "100"}))  # heartbeat: nothing changes
    assert feed.outstanding == 5
    feed.release(taken)
    assert feed.held_count == 0
    # A status without counts (a reset server, a deleted consumer) forgets what was asked for.
    await feed._on_msg(_msg(data=b"", reply="", headers={"Status": "409", "Description": "Consumer Deleted"}))
    assert feed.outstanding == 0 and feed.consumer_gone


class _FakePool:
    """rt.db() stand-in: counts connections taken and given back."""

    def __init__(self):
        self.taken = 0
        self.given_back = 0

    def db(self):
        pool = self

        class _Ctx:
            async def __aenter__(self):
                pool.taken += 1
                return f"conn-{pool.taken}"

            async def __aexit__(self, *exc):
                pool.given_back += 1

        return _Ctx()


async def test_writer_keeps_its_connection_until_a_failure():
    pool = _FakePool()
    held = _HeldConnection(pool)
    # Kept from one write to the next: the pool's reset query is not paid per transaction.
    assert await held.get() == "conn-1" and await held.get() == "conn-1" and pool.taken == 1
    # After a failure it is given back and the retry takes a fresh one.
    await held.release()
    assert pool.given_back == 1 and await held.get() == "conn-2"
    await held.release()
    await held.release()  # nothing held: nothing given back twice
    assert (pool.taken, pool.given_back) == (2, 2)


def test_dcgm_exporter_output():
    now = datetime.now(UTC)
    cluster = Cluster(stale_after_s=10)
    cluster.apply_heartbeat(Heartbeat(node="n1", time=now, agent_version="t", interval_s=1, hostname="host-a",
                                      gpus=[GpuInventory(uuid="GPU-n1-0", index=0, name="NVIDIA A100-SXM4-80GB",
                                                         pci_bus_id="00000000:07:00.0")]))
    s = sample("n1", 0, now, util_gpu_pct=87.0, mem_used_mb=1000.0, mem_total_mb=81920.0, xid_errors=[48],
               throttle_reasons=["hw_slowdown"])
    cluster.apply_sample(s, time.monotonic())
    stale = sample("n1", 1, now)
    cluster.apply_sample(stale, time.monotonic() - 60)  # its node stopped reporting a minute ago
    exporter = DcgmExporter(SimpleNamespace(cluster=cluster))
    exporter.on_batches([TelemetryBatch(node="n1", seq=0, time=now, samples=[s])])
    fams = {f.name: f for f in text_string_to_metric_families(exporter.render().decode())}
    util = fams["DCGM_FI_DEV_GPU_UTIL"].samples
    assert len(util) == 1  # the stale GPU is left out
    assert util[0].labels == {"gpu": "0", "UUID": "GPU-n1-0", "pci_bus_id": "00000000:07:00.0",
                              "device": "nvidia0", "modelName": "NVIDIA A100-SXM4-80GB", "hostname": "host-a",
                              "DCGM_FI_DRIVER_VERSION": ""}
    assert util[0].value == 87.0
    assert fams["DCGM_FI_DEV_FB_FREE"].samples[0].value == 80920.0
    assert fams["DCGM_FI_DEV_XID_ERRORS"].samples[0].value == 48
    assert fams["DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"].samples[0].value == 0x008
    # Counters keep dcgm-exporter's exact names (no `_total` suffix added).
    assert fams["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
    assert fams["DCGM_FI_DEV_GPU_UTIL"].type == "gauge"
    # Label values from agents are escaped, never break the exposition format.
    cluster.nodes["n1"].heartbeat.hostname = 'evil"host\\'
    exporter._cached = (0.0, b"")
    util = {f.name: f for f in text_string_to_metric_families(exporter.render().decode())}["DCGM_FI_DEV_GPU_UTIL"]
    assert util.samples[0].labels["hostname"] == 'evil"host\\'
