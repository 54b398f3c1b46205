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
        self.ingest_redelivered = Counter("aether_ingest_redelivered_messages_total",
                                          "Telemetry messages delivered more than once (crash, lost ack, ack wait)",
                                          registry=r)
        self.ingest_write_seconds = Histogram("aether_ingest_write_seconds", "One COPY transaction, begin to commit",
                                              registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                                   5, 10))
        self.ingest_held = Gauge("aether_ingest_held_messages", "Messages received and not yet acked (this replica)",
                                 registry=r)
        self.ingest_stream_pending = Gauge("aether_ingest_stream_pending_messages",
                                           "Telemetry messages in the stream not yet delivered to any replica",
                                           registry=r)
        self.ingest_ack_pending = Gauge("aether_ingest_ack_pending_messages",
                                        "Telemetry messages delivered and not yet acked (all replicas)", registry=r)
        self.heartbeats = Counter("aether_heartbeats_total", "Heartbeats received", registry=r)
        self.bad_heartbeats = Counter("aether_heartbeats_malformed_total", "Malformed heartbeats dead-lettered",
                                      registry=r)
        self.nodes_healthy = Gauge("aether_nodes_healthy", "Nodes heartbeating within the timeout", registry=r)
        self.nodes_total = Gauge("aether_nodes", "Nodes known", registry=r)
        self.ws_clients = Gauge("aether_ws_clients", "Connected WebSocket clients", registry=r)
        self.ws_dropped = Counter("aether_ws_dropped_clients_total", "WebSocket clients dropped for falling behind",
                                  registry=r)
