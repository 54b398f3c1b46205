"""Per-GPU gauges on /metrics named and labelled as NVIDIA's dcgm-exporter does, so its Grafana dashboards work
unchanged against the orchestrator (one scrape for the whole cluster instead of one exporter per node).

Names, units and help texts follow dcgm-exporter's default counters (etc/default-counters.csv); labels are its
GPU label set `gpu, UUID, pci_bus_id, device, modelName, hostname` plus `DCGM_FI_DRIVER_VERSION`, as recent versions
add. (`hostname` is the current spelling: dcgm-exporter renamed `Hostname` to `hostname` in 2026, NVIDIA/dcgm-exporter
#655; dashboards written for the old label need `{{Hostname}}` changed to `{{hostname}}`.) A GPU whose latest
sample is stale is left out, as a node whose exporter is down would be.

The text is written here rather than through prometheus_client's formatter: at 10,000 GPUs that formatter took
3.5 s of CPU per scrape (on the event loop, stalling ingest); this takes well under a tenth of it, in a worker
thread, and a rendering is reused for a second. `/metrics` appends it after the registry's own metrics.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

from orchestrator import throttle
from orchestrator.runtime import Runtime
from services.schemas import TelemetryBatch, TelemetrySample

LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "hostname", "DCGM_FI_DRIVER_VERSION")


def _fb_free(s: TelemetrySample) -> float | None:
    if s.mem_total_mb is None or s.mem_used_mb is None:
        return None
    return max(0.0, s.mem_total_mb - s.mem_used_mb)


# (name, Prometheus type, help, value from the latest sample). Help texts are dcgm-exporter's.
Reading = Callable[[TelemetrySample], float | int | None]
METRICS: tuple[tuple[str, str, str, Reading], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", lambda s: s.sm_clock_mhz),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", lambda s: s.mem_clock_mhz),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", lambda s: s.mem_temp_c),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda s: s.temp_c),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda s: s.power_w),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Power management limit (in W).", lambda s: s.power_limit_w),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
     lambda s: s.energy_mj),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda s: s.util_gpu_pct),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", lambda s: s.util_mem_pct),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", _fb_free),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", lambda s: s.mem_used_mb),
    ("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB).", lambda s: s.mem_total_mb),
    ("DCGM_FI_DEV_FAN_SPEED", "gauge", "Fan speed (in 0-100%).", lambda s: s.fan_pct),
    ("DCGM_FI_DEV_PSTATE", "gauge", "Performance state (P-State) 0-15. 0=highest", lambda s: s.pstate),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "Current clock throttle reasons (bitmask of NVML reasons).",
     lambda s: throttle.mask(s.throttle_reasons)),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors.",
     lambda s: s.ecc_sbe),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors.",
     lambda s: s.ecc_dbe),
)
XID = ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class DcgmExporter:
    """Renders the cluster model's latest samples; remembers each GPU's last XID (samples carry only new ones)."""

    reuse_s = 1.0

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last_xid: dict[str, int] = {}
        self._labels: dict[str, tuple[tuple, str]] = {}  # uuid -> (label values, rendered `{...}`)
        self._cached: tuple[float, bytes] = (0.0, b"")
        self._lock = threading.Lock()

    def on_batches(self, batches: list[TelemetryBatch]) -> None:
        for b in batches:
            for s in b.samples:
                if s.xid_errors:
                    self.last_xid[s.gpu_uuid] = s.xid_errors[-1]

    def _label_text(self, uuid: str, values: tuple) -> str:
        hit = self._labels.get(uuid)
        if hit is not None and hit[0] == values:
            return hit[1]
        text = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in zip(LABELS, values, strict=True)) + "}"
        self._labels[uuid] = (values, text)
        return text

    def render(self) -> bytes:
        """The exposition text of every fresh GPU (thread-safe; reused for `reuse_s`)."""
        with self._lock:
            at, body = self._cached
            if time.monotonic() - at < self.reuse_s:
                return body
            body = self._render()
            self._cached = (time.monotonic(), body)
            return body

    def _render(self) -> bytes:
        cluster = self.rt.cluster
        gpus = list(cluster.gpus.values())  # one C-level copy: safe from a worker thread
        stale = cluster.stale_after_s
        now = time.monotonic()
        lines: list[list[str]] = [[] for _ in range(len(METRICS) + 1)]
        readers = [m[3] for m in METRICS]
        for g in sorted(gpus, key=lambda g: (g.node, g.index)):
            s = g.sample
            if s is None or now - g.sample_mono > stale:
                continue
            node = cluster.nodes.get(g.node)
            hb = node.heartbeat if node is not None else None
            values = (str(g.index), g.uuid, g.pci_bus_id or s.pci_bus_id or "", f"nvidia{g.index}", g.name,
                      hb.hostname if hb is not None and hb.hostname else g.node,
                      (hb.driver_version or "") if hb is not None else "")
            labels = self._label_text(g.uuid, values)
            for out, read in zip(lines, readers, strict=False):
                v = read(s)
                if v is not None:
                    out.append(f"{labels} {_number(v)}\n")
            lines[-1].append(f"{labels} {self.last_xid.get(g.uuid, 0)}\n")
        parts: list[str] = []
        # Counters keep dcgm-exporter's exact names (no `_total`); declared untyped so nothing renames them.
        for (name, typ, help_, _), samples in zip((*METRICS, (*XID, None)), lines, strict=True):
            if not samples:
                continue
            parts.append(f"# HELP {name} {help_}\n# TYPE {name} {'gauge' if typ == 'gauge' else 'untyped'}\n")
            parts.extend(f"{name}{line}" for line in samples)
        return "".join(parts).encode()

    async def text(self) -> bytes:
        return await asyncio.to_thread(self.render)


async def start(rt: Runtime) -> None:
    exporter = DcgmExporter(rt)
    rt.components["dcgm"] = exporter
    rt.components.setdefault("sample_listeners", []).append(exporter.on_batches)
    # /metrics (orchestrator/api/system.py) appends the text of every callable listed here.
    rt.components.setdefault("metrics_text", []).append(exporter.text)
