"""The AI core's Prometheus registry: decision latency, decisions by outcome, candidates per decision, model version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AiCoreMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.decision_seconds = Histogram(
            "aether_ai_core_decision_seconds", "Time to answer POST /v1/place (parse, constraints, scoring, explain)",
            registry=r, buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
                                 0.5, 1.0, 2.5))
        self.decisions = Counter("aether_ai_core_decisions_total",
                                 "Placement requests by outcome (ok, no_model, no_feasible, invalid, too_large, error)",
                                 ["outcome"], registry=r)
        self.candidates = Histogram("aether_ai_core_candidates", "Candidates per placement request", registry=r,
                                    buckets=(1, 4, 8, 16, 64, 256, 1000, 4000, 10000, 20000))
        self.model_info = Gauge("aether_ai_core_model_info", "The model version being served (value 1)", ["version"],
                                registry=r)
        self.model_loaded = Gauge("aether_ai_core_model_loaded", "1 when a placement model is loaded", registry=r)
        self.model_loaded_at = Gauge("aether_ai_core_model_loaded_timestamp_seconds",
                                     "Unix time the served model was loaded", registry=r)
        self.reloads = Counter("aether_ai_core_model_reloads_total", "Model loads by result (ok, failed)", ["result"],
                               registry=r)
        self.malformed = Counter("aether_ai_core_malformed_messages_total",
                                 "Malformed model-update messages dead-lettered", registry=r)
        self.nats_connected = Gauge("aether_ai_core_nats_connected", "1 while connected to NATS for hot reload",
                                    registry=r)

    def served(self, version: str | None) -> None:
        self.model_info.clear()
        if version:
            self.model_info.labels(version=version).set(1)
        self.model_loaded.set(1 if version else 0)
