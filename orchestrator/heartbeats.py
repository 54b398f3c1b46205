"""Cluster membership: heartbeats update nodes and GPUs; a node silent past the timeout is marked unhealthy."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

from orchestrator.runtime import DB_DOWN_ERRORS, Runtime
from services import subjects
from services.bus import dead_letter, decode
from services.errors import MalformedMessage
from services.schemas import Heartbeat

log = logging.getLogger("aether.heartbeats")

UPSERT_NODE = """
INSERT INTO nodes (name, hostname, agent_version, simulated, interval_s, driver_version, cuda_version,
                   last_heartbeat, healthy)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true)
ON CONFLICT (name) DO UPDATE SET hostname = EXCLUDED.hostname, agent_version = EXCLUDED.agent_version,
    simulated = EXCLUDED.simulated, interval_s = EXCLUDED.interval_s, driver_version = EXCLUDED.driver_version,
    cuda_version = EXCLUDED.cuda_version, last_heartbeat = EXCLUDED.last_heartbeat, healthy = true
"""
UPSERT_GPU = """
INSERT INTO gpus (uuid, node, idx, name, mem_total_mb, power_limit_w, pci_bus_id, healthy, last_seen)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
ON CONFLICT (uuid) DO UPDATE SET node = EXCLUDED.node, idx = EXCLUDED.idx, name = EXCLUDED.name,
    mem_total_mb = EXCLUDED.mem_total_mb, power_limit_w = EXCLUDED.power_limit_w, pci_bus_id = EXCLUDED.pci_bus_id,
    healthy = EXCLUDED.healthy, last_seen = now()
"""


class _Writer:
    """Persists heartbeats off the NATS callback: the latest per node, written only when the node is new, its
    inventory changed, or `REFRESH_S` passed — a row per heartbeat would queue behind fsync on a big cluster."""

    REFRESH_S = 30.0

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pending: dict[str, Heartbeat] = {}
        self.written: dict[str, tuple[float, tuple]] = {}
        self.wake = asyncio.Event()

    @staticmethod
    def _shape(hb: Heartbeat) -> tuple:
        return (hb.agent_version, hb.simulated, hb.interval_s, hb.driver_version,
                tuple((g.uuid, g.index, g.name, g.mem_total_mb, g.power_limit_w, g.healthy) for g in hb.gpus))

    def offer(self, hb: Heartbeat) -> None:
        last = self.written.get(hb.node)
        if last and last[1] == self._shape(hb) and time.monotonic() - last[0] < self.REFRESH_S:
            return
        self.pending[hb.node] = hb
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self.rt.db_ready.wait()
            batch, self.pending = self.pending, {}
            for node, hb in batch.items():
                try:
                    await _persist(self.rt, hb)
                    self.written[node] = (time.monotonic(), self._shape(hb))
                except DB_DOWN_ERRORS as exc:
                    log.warning("heartbeat not persisted: database unavailable",
                                extra={"node": node, "error": repr(exc)})
                    self.pending.setdefault(node, hb)  # keep the newest; retried on the next wake
                except Exception as exc:
                    # Valid by the schema but not storable (a value beyond a column's range): this heartbeat is
                    # lost to the database, not the writer, which must go on storing everyone else's.
                    log.error("heartbeat not persisted: the database refused it",
                              extra={"node": node, "error": repr(exc)})
            if self.pending:
                await asyncio.sleep(1.0)
                self.wake.set()


async def start(rt: Runtime) -> None:
    writer = _Writer(rt)
    rt.spawn(writer.run(), "heartbeat-writer")

    async def on_heartbeat(msg: Msg) -> None:
        try:
            if b"\\u0000" in msg.data:  # valid JSON, but no text column can store it: it would fail every upsert
                raise MalformedMessage(f"heartbeat on {msg.subject} holds a NUL character")
            hb = decode(Heartbeat, msg.data, msg.subject)
            if subjects.node_of(msg.subject) != hb.node:
                raise MalformedMessage(f"heartbeat for node {hb.node!r} arrived on {msg.subject}")
        except MalformedMessage as exc:
            rt.metrics.bad_heartbeats.inc()
            log.warning("malformed heartbeat", extra={"subject": msg.subject, "error": exc.message})
            await dead_letter(rt.nc, "heartbeat", msg.subject, msg.data, exc.message)
            return
        rt.metrics.heartbeats.inc()
        came_up = rt.cluster.apply_heartbeat(hb)
        if came_up:
            log.info("node up", extra={"node": hb.node, "gpus": len(hb.gpus)})
            rt.hub.publish({"type": "nodes", "nodes": [rt.cluster.nodes[hb.node].view()]})
            for cb in rt.on_node_up:
                await _safe(cb, hb.node)
        _update_gauges(rt)
        writer.offer(hb)

    await rt.nc.subscribe(subjects.HEARTBEAT_ALL, cb=on_heartbeat)
    rt.spawn(_watch(rt), "heartbeat-watch")


async def _persist(rt: Runtime, hb: Heartbeat) -> None:
    async with rt.db() as conn, conn.transaction():
        await conn.execute(UPSERT_NODE, hb.node, hb.hostname, hb.agent_version, hb.simulated, hb.interval_s,
                           hb.driver_version, hb.cuda_version, hb.time)
        await conn.executemany(UPSERT_GPU, [(g.uuid, hb.node, g.index, g.name, g.mem_total_mb, g.power_limit_w,
                                             g.pci_bus_id, g.healthy) for g in hb.gpus])


async def _watch(rt: Runtime) -> None:
    """Once a second: nodes silent past the timeout go unhealthy, their GPUs leave placement. While this process
    is cut off from NATS the silence is ours, not the nodes': nothing expires, and on reconnecting every node gets
    a full timeout to be heard again (otherwise a NATS restart marks every running job LOST and runs it twice)."""
    cut_off = False
    while True:
        await asyncio.sleep(1.0)
        if not rt.nc.is_connected:
            cut_off = True
            continue
        if cut_off:
            cut_off = False
            now = time.monotonic()
            for node in rt.cluster.nodes.values():
                node.last_heartbeat_mono = max(node.last_heartbeat_mono, now)
            log.info("nats back: node heartbeat clocks restarted", extra={"nodes": len(rt.cluster.nodes)})
        for node in rt.cluster.expire_nodes(rt.settings.heartbeat_timeout_s):
            log.warning("node stopped heartbeating", extra={"node": node.name,
                                                            "timeout_s": rt.settings.heartbeat_timeout_s})
            rt.hub.publish({"type": "nodes", "nodes": [node.view()]})
            if rt.db_ready.is_set():
                try:
                    async with rt.db() as conn:
                        await conn.execute("UPDATE nodes SET healthy = false WHERE name = $1", node.name)
                except DB_DOWN_ERRORS:
                    pass  # the in-memory state is authoritative for placement; the row catches up on return
            for cb in rt.on_node_down:
                await _safe(cb, node.name)
        _update_gauges(rt)


def _update_gauges(rt: Runtime) -> None:
    rt.metrics.nodes_total.set(len(rt.cluster.nodes))
    rt.metrics.nodes_healthy.set(sum(1 for n in rt.cluster.nodes.values() if n.healthy))


async def _safe(cb, node: str) -> None:
    try:
        await cb(node)
    except Exception:
        log.exception("node callback failed", extra={"node": node})
