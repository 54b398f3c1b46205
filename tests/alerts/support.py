"""Helpers of the alert and carbon tests: crafted telemetry, polling with a deadline, a local webhook receiver."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.schemas import TelemetryBatch, TelemetrySample
from tests.support.waiting import until  # noqa: F401  (re-exported for the tests here)

H100 = "NVIDIA H100 80GB HBM3"


def sample(node: str, t: datetime, index: int = 0, **fields: Any) -> TelemetrySample:
    """A healthy, idle-ish H100 reading at time `t`; `fields` override any reading."""
    base: dict[str, Any] = dict(time=t, node=node, gpu_index=index, gpu_uuid=f"GPU-{node}-{index}", name=H100,
                                util_gpu_pct=50.0, util_mem_pct=20.0, mem_used_mb=1000.0, mem_total_mb=81559.0,
                                temp_c=60.0, power_w=300.0, power_limit_w=700.0, sm_clock_mhz=1980.0,
                                throttle_reasons=[], ecc_dbe=0)
    base.update(fields)
    return TelemetrySample(**base)


def batch(node: str, seq: int, samples: list[TelemetrySample]) -> TelemetryBatch:
    return TelemetryBatch(node=node, seq=seq, time=samples[0].time, samples=samples)


def timeline(start: datetime, n: int, step_s: float = 1.0) -> list[datetime]:
    return [start + timedelta(seconds=i * step_s) for i in range(n)]


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that answers the first `fail_first` POSTs of each node's alerts with
    `fail_status` (503), then 200."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.calls: list[dict] = []
        self.received: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                doc = json.loads(body)
                with receiver.lock:
                    receiver.calls.append({"doc": doc, "headers": dict(self.headers), "raw": body})
                    node = doc["alert"]["node"]
                    failed = sum(1 for c in receiver.calls if c["doc"]["alert"]["node"] == node) <= receiver.fail_first
                    if not failed:
                        receiver.received.append(doc)
                self.send_response(receiver.fail_status if failed else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def for_node(self, node: str) -> tuple[list[dict], list[dict]]:
        with self.lock:
            return ([c for c in self.calls if c["doc"]["alert"]["node"] == node],
                    [d for d in self.received if d["alert"]["node"] == node])
