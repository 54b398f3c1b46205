"""A stand-in for node agents: publishes heartbeats and telemetry for N nodes x M GPUs from a background thread.

Used by the browser tests (until agents run in them) and by bench/dashboard.py (1,000 GPUs from one process)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from datetime import UTC, datetime

import nats

from services import subjects
from services.bus import ensure_telemetry_stream
from services.schemas import GpuInventory, Heartbeat, TelemetryBatch, TelemetrySample

MODEL = "NVIDIA H100 80GB HBM3"
MEM_TOTAL_MB = 81559.0
POWER_LIMIT_W = 700.0


def gpu_uuid(node: str, index: int) -> str:
    return f"GPU-{node}-{index:04d}"


def sample(node: str, index: int, now: datetime, t: float) -> TelemetrySample:
    """Plausible, ever-changing readings: utilisation waves, power and temperature follow it."""
    phase = index * 0.9 + sum(node.encode()) % 100 / 10
    util = 50 + 45 * math.sin(t / 4 + phase)
    power = 80 + (POWER_LIMIT_W - 120) * util / 100
    temp = 35 + 40 * util / 100
    throttle = ["power_cap"] if util > 85 else ["idle"] if util < 8 else []
    return TelemetrySample(
        time=now, node=node, gpu_index=index, gpu_uuid=gpu_uuid(node, index), name=MODEL,
        util_gpu_pct=round(util, 1), util_mem_pct=round(util * 0.6, 1),
        mem_used_mb=round(4000 + 60000 * (0.5 + 0.5 * math.sin(t / 30 + phase)), 1), mem_total_mb=MEM_TOTAL_MB,
        temp_c=round(temp, 1), power_w=round(power, 1), power_limit_w=POWER_LIMIT_W,
        sm_clock_mhz=1980 if util > 5 else 345, mem_clock_mhz=2619, pstate=0 if util > 5 else 8,
        throttle_reasons=throttle, fan_pct=None, ecc_sbe=0, ecc_dbe=0)


class Feeder:
    """Publishes like `len(nodes)` agents with `gpus` GPUs each, every `interval_s`, until stopped. With `spread`,
    node k publishes at k/N of the interval, as independent agents do; each batch is stamped just before it is
    published, so a lag measured from the sample time is the system's, not this feeder's."""

    def __init__(self, nats_url: str, nodes: list[str], gpus: int = 4, interval_s: float = 0.5,
                 heartbeat_every_s: float = 1.0, spread: bool = False) -> None:
        self.nats_url = nats_url
        self.nodes = nodes
        self.gpus = gpus
        self.interval_s = interval_s
        self.heartbeat_every_s = heartbeat_every_s
        self.spread = spread
        self.ticks = 0
        self.publish_errors = 0
        self.publish_s: list[float] = []  # stamp -> JetStream ack, per batch (the benchmark checks it keeps up)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def uuids(self) -> list[str]:
        return [gpu_uuid(n, i) for n in self.nodes for i in range(self.gpus)]

    def start(self, timeout: float = 15.0) -> Feeder:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="feeder", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("feeder did not connect to NATS")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    async def _run(self) -> None:
        nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        await ensure_telemetry_stream(js)
        inventories = {n: [GpuInventory(uuid=gpu_uuid(n, i), index=i, name=MODEL, mem_total_mb=MEM_TOTAL_MB,
                                        power_limit_w=POWER_LIMIT_W) for i in range(self.gpus)] for n in self.nodes}
        self._ready.set()
        seq = 0
        last_hb = 0.0
        start = time.monotonic()
        next_tick = start
        try:
            while not self._stop.is_set():
                if time.monotonic() - last_hb >= self.heartbeat_every_s:
                    last_hb = time.monotonic()
                    for n in self.nodes:
                        hb = Heartbeat(node=n, time=datetime.now(UTC), agent_version="feeder",
                                       interval_s=self.interval_s, simulated=True, gpus=inventories[n])
                        with contextlib.suppress(Exception):
                            await nc.publish(subjects.heartbeat(n), hb.to_bytes())
                for k, n in enumerate(self.nodes):
                    if self.spread:
                        delay = next_tick + self.interval_s * k / len(self.nodes) - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    began = time.monotonic()
                    now = datetime.now(UTC)
                    batch = TelemetryBatch(node=n, seq=seq, time=now, interval_s=self.interval_s,
                                           samples=[sample(n, i, now, began - start) for i in range(self.gpus)])
                    try:
                        await js.publish(subjects.telemetry(n), batch.to_bytes(), headers={"Nats-Msg-Id": batch.msg_id()})
                        self.publish_s.append(time.monotonic() - began)
                    except Exception:
                        self.publish_errors += 1
                seq += 1
                self.ticks += 1
                # Ticks on a fixed grid (no drift); a late tick is not made up for, as an agent would do.
                next_tick += self.interval_s
                delay = next_tick - time.monotonic()
                if delay < 0:
                    next_tick = time.monotonic()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
