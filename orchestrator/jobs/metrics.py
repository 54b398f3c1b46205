"""Prometheus metrics of jobs, on the orchestrator's registry: active jobs, outcomes, durations, queue, placement."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.schemas import JobState

_DURATIONS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 24 * 3600)
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.submitted = Counter("aether_jobs_submitted_total", "Jobs accepted by POST /v1/jobs", registry=r)
        self.refused = Counter("aether_jobs_refused_total", "Submissions refused, by error code", ["code"], registry=r)
        self.transitions = Counter("aether_job_transitions_total", "Job state transitions applied",
                                   ["from_state", "to_state"], registry=r)
        self.finished = Counter("aether_jobs_finished_total", "Jobs reaching a final state", ["state"], registry=r)
        self.active = Gauge("aether_jobs_active", "Jobs not finished, by state (leader's view)", ["state"],
                            registry=r)
        self.queue_depth = Gauge("aether_jobs_queue_depth", "Jobs waiting to be placed (leader's view)", registry=r)
        self.success_ratio = Gauge("aether_jobs_success_ratio",
                                   "Share of jobs finished in the last hour that SUCCEEDED", registry=r)
        self.mean_duration = Gauge("aether_jobs_mean_duration_seconds",
                                   "Mean run time (RUNNING to final) of jobs finished in the last hour", registry=r)
        self.duration = Histogram("aether_job_duration_seconds", "Run time of finished jobs, RUNNING to final",
                                  buckets=_DURATIONS, registry=r)
        self.placement_latency = Histogram("aether_placement_latency_seconds",
                                           "Time to place one job (candidates + decision)", buckets=_LATENCY,
                                           registry=r)
        self.placements = Counter("aether_placements_total", "Placement decisions, by policy", ["policy"],
                                  registry=r)
        self.dispatch_latency = Histogram("aether_dispatch_latency_seconds", "Dispatch request to agent ack",
                                          buckets=_LATENCY, registry=r)
        self.dispatch_failures = Counter("aether_dispatch_failures_total",
                                         "Dispatches not acknowledged (job re-queued), by reason", ["reason"],
                                         registry=r)
        self.reports = Counter("aether_job_reports_total", "Job state reports and log lines consumed", ["kind"],
                               registry=r)
        self.reports_refused = Counter("aether_job_reports_refused_total",
                                       "Agent state reports not applied, by reason", ["reason"], registry=r)
        self.reports_malformed = Counter("aether_job_reports_malformed_total",
                                         "Malformed job messages dead-lettered", registry=r)
        self.strays_cancelled = Counter("aether_jobs_stray_cancels_total",
                                        "Cancels sent to nodes running a job not assigned to them", registry=r)
        self.lost = Counter("aether_jobs_lost_total", "Jobs LOST (node down, agent restart, reconciliation)",
                            registry=r)
        self.leader = Gauge("aether_scheduler_leader", "1 while this replica holds the scheduler lease", registry=r)
        self.purged = Counter("aether_jobs_purged_total", "Finished jobs deleted by retention", registry=r)
        for s in (JobState.PENDING, JobState.SCHEDULED, JobState.RUNNING):
            self.active.labels(s.value).set(0)
