"""The orchestrator's Prometheus registry and its own counters; components register more collectors on it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OrchestratorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingest_messages = Counter("aether_ingest_messages_total", "Telemetry messages ingested", registry=r)
        self.ingest_samples = Counter("aether_ingest_samples_total", "GPU samples stored", registry=r)
        self.ingest_malformed = Counter("aether_ingest_malformed_total", "Malformed telemetry messages dead-lettered",
                                        registry=r)
        self.ingest_duplicates = Counter("aether_ingest_duplicate_samples_total",
                                         "Samples already stored (redeliveries), skipped", registry=r)
        self.ingest_db_errors = Counter("aether_ingest_db_errors_total", "Failed batch writes (retried)", registry=r)
        self.ingest_batches = Counter("aether_ingest_batches_total", "Batches committed", registry=r)
        self.ingest_lag = Histogram("aether_ingest_lag_seconds", "Sample time to row committed", registry=r,
                                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.ingest_last_commit = Gauge("aether_ingest_last_commit_timestamp_seconds",
                                        "Unix time of the last committed batch", registry=r)
        self.heartbeats = Counter("aether_heartbeats_total", "Heartbeats received", registry=r)
        self.bad_heartbeats = Counter("aether_heartbeats_malformed_total", "Malformed heartbeats dead-lettered",
                                      registry=r)
        self.nodes_healthy = Gauge("aether_nodes_healthy", "Nodes heartbeating within the timeout", registry=r)
        self.nodes_total = Gauge("aether_nodes", "Nodes known", registry=r)
        self.ws_clients = Gauge("aether_ws_clients", "Connected WebSocket clients", registry=r)
        self.ws_dropped = Counter("aether_ws_dropped_clients_total", "WebSocket clients dropped for falling behind",
                                  registry=r)
