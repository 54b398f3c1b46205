"""The live cluster model held in memory: nodes from heartbeats, GPUs with their latest sample and reservations."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.schemas import Heartbeat, TelemetryBatch, TelemetrySample


@dataclass
class GpuState:
    uuid: str
    node: str
    index: int
    name: str
    mem_total_mb: float | None = None
    power_limit_w: float | None = None
    pci_bus_id: str | None = None
    reported_healthy: bool = True
    sample: TelemetrySample | None = None
    sample_mono: float = 0.0  # monotonic time the latest sample arrived
    reserved_mb: float = 0.0  # memory promised to placed jobs not yet visible in samples
    jobs: set[str] = field(default_factory=set)
    excluded_reason: str | None = None  # set by alerts (critical) to keep placement away

    def view(self, node_healthy: bool, stale_after_s: float) -> dict[str, Any]:
        fresh = self.sample is not None and (time.monotonic() - self.sample_mono) < stale_after_s
        healthy = node_healthy and self.reported_healthy and fresh and (self.sample is None or self.sample.healthy)
        return {
            "uuid": self.uuid,
            "node": self.node,
            "index": self.index,
            "name": self.name,
            "mem_total_mb": self.mem_total_mb,
            "healthy": healthy,
            "jobs": sorted(self.jobs),
            "excluded_reason": self.excluded_reason,
            "sample": self.sample.model_dump(mode="json") if self.sample is not None else None,
        }


@dataclass
class NodeState:
    name: str
    heartbeat: Heartbeat | None = None
    last_heartbeat_mono: float = 0.0
    healthy: bool = True

    def view(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "name": self.name,
            "healthy": self.healthy,
            "last_heartbeat": hb.time.isoformat() if hb else None,
            "agent_version": hb.agent_version if hb else None,
            "simulated": hb.simulated if hb else None,
            "interval_s": hb.interval_s if hb else None,
            "gpus": len(hb.gpus) if hb else 0,
            "running_jobs": list(hb.running_jobs) if hb else [],
        }


class Cluster:
    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.gpus: dict[str, GpuState] = {}
        self.stale_after_s = stale_after_s

    def apply_heartbeat(self, hb: Heartbeat) -> bool:
        """Record a heartbeat; True when the node was unknown or came back from unhealthy."""
        node = self.nodes.get(hb.node)
        changed = node is None or not node.healthy
        if node is None:
            node = self.nodes[hb.node] = NodeState(hb.node)
        node.heartbeat = hb
        node.last_heartbeat_mono = time.monotonic()
        node.healthy = True
        for inv in hb.gpus:
            gpu = self.gpus.get(inv.uuid)
            if gpu is None:
                gpu = self.gpus[inv.uuid] = GpuState(inv.uuid, hb.node, inv.index, inv.name)
            gpu.node, gpu.index, gpu.name = hb.node, inv.index, inv.name
            gpu.mem_total_mb = inv.mem_total_mb
            gpu.power_limit_w = inv.power_limit_w
            gpu.pci_bus_id = inv.pci_bus_id
            gpu.reported_healthy = inv.healthy
        return changed

    def apply_sample(self, s: TelemetrySample, arrived_mono: float | None = None) -> GpuState:
        gpu = self.gpus.get(s.gpu_uuid)
        if gpu is None:
            # Telemetry can arrive before the first heartbeat: learn the GPU from the sample.
            gpu = self.gpus[s.gpu_uuid] = GpuState(s.gpu_uuid, s.node, s.gpu_index, s.name, s.mem_total_mb,
                                                   s.power_limit_w, s.pci_bus_id)
            self.nodes.setdefault(s.node, NodeState(s.node))
        if gpu.sample is None or s.time >= gpu.sample.time:
            gpu.sample = s
            gpu.sample_mono = arrived_mono if arrived_mono is not None else time.monotonic()
            if s.mem_total_mb is not None:
                gpu.mem_total_mb = s.mem_total_mb
        return gpu

    def apply_batches(self, batches: Iterable[TelemetryBatch], arrived_mono: float) -> list[str]:
        """Apply every sample of the batches (ingest's path); returns the uuids of the GPUs they touched."""
        apply = self.apply_sample
        return [apply(s, arrived_mono).uuid for batch in batches for s in batch.samples]

    def expire_nodes(self, timeout_s: float) -> list[NodeState]:
        """Mark nodes silent for longer than `timeout_s` unhealthy; return those that just went down."""
        now = time.monotonic()
        down = []
        for node in self.nodes.values():
            if node.healthy and node.heartbeat is not None and now - node.last_heartbeat_mono > timeout_s:
                node.healthy = False
                down.append(node)
        return down

    def node_healthy(self, name: str) -> bool:
        node = self.nodes.get(name)
        return node is not None and node.healthy and node.heartbeat is not None

    def gpu_view(self, gpu: GpuState) -> dict[str, Any]:
        return gpu.view(self.node_healthy(gpu.node), self.stale_after_s)

    def gpu_views(self) -> list[dict[str, Any]]:
        return [self.gpu_view(g) for g in sorted(self.gpus.values(), key=lambda g: (g.node, g.index))]

    def node_views(self) -> list[dict[str, Any]]:
        return [n.view() for n in sorted(self.nodes.values(), key=lambda n: n.name)]

    def last_seen(self, node: str) -> datetime | None:
        n = self.nodes.get(node)
        return n.heartbeat.time if n and n.heartbeat else None
