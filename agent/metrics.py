"""The agent's Prometheus metrics, in a registry of its own (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.samples_published = Counter("aether_agent_samples_published_total",
                                         "GPU samples stored in JetStream", registry=r)
        self.batches_published = Counter("aether_agent_batches_published_total",
                                         "telemetry batches (one per node per tick) stored in JetStream", registry=r)
        self.publish_errors = Counter("aether_agent_publish_errors_total", "failed JetStream publishes (retried)",
                                      ["outbox"], registry=r)
        self.buffer_dropped = Counter("aether_agent_buffer_dropped_total",
                                      "messages dropped, oldest first, from a full local buffer", ["outbox"],
                                      registry=r)
        self.buffer_depth = Gauge("aether_agent_buffer_depth", "messages waiting in the local buffer", ["outbox"],
                                  registry=r)
        self.nvml_errors = Counter("aether_agent_nvml_errors_total", "NVML reads that failed, by field and error",
                                   ["field", "error"], registry=r)
        self.gpus = Gauge("aether_agent_gpus", "GPUs this agent samples", registry=r)
        self.gpus_unhealthy = Gauge("aether_agent_gpus_unhealthy", "GPUs reported unhealthy in the last tick",
                                    registry=r)
        self.ticks = Counter("aether_agent_ticks_total", "sampling ticks", registry=r)
        self.ticks_skipped = Counter("aether_agent_ticks_skipped_total",
                                     "ticks skipped because the previous one overran", registry=r)
        self.tick_lag = Histogram("aether_agent_tick_lag_seconds", "how late a tick started after its schedule",
                                  buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                                  registry=r)
        self.read_seconds = Histogram("aether_agent_read_seconds", "time to read every GPU once",
                                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                                      registry=r)
        self.heartbeats = Counter("aether_agent_heartbeats_total", "heartbeats published", registry=r)
        self.jobs_running = Gauge("aether_agent_jobs_running", "jobs running now", registry=r)
        self.jobs_finished = Counter("aether_agent_jobs_finished_total", "jobs ended, by final state", ["state"],
                                     registry=r)
        self.job_log_lines = Counter("aether_agent_job_log_lines_total", "job output lines published", registry=r)
        self.duplicate_dispatches = Counter("aether_agent_duplicate_dispatches_total",
                                            "dispatches of a job attempt already accepted (answered, not re-run)",
                                            registry=r)
        self.malformed = Counter("aether_agent_malformed_messages_total",
                                 "command messages that did not parse (dead-lettered)", ["verb"], registry=r)
        self.faults_injected = Counter("aether_agent_faults_injected_total", "simulated faults injected", ["fault"],
                                       registry=r)
