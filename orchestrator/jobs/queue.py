"""The pending queue: priority first, then age, fair across tenants.

Among the tenants whose next job has the highest priority, the tenant holding the fewest GPUs goes first (GPUs of
its placed jobs, plus those it was handed earlier in the same pass), then the oldest job. A job keeps its
submission time when it is re-queued, so a job that lost its node is not sent to the back.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from orchestrator.jobs.model import Job


@dataclass
class _Tenant:
    # priority -> sorted [(submitted_ts, job_id)]
    levels: dict[int, list[tuple[float, str]]] = field(default_factory=dict)

    def order(self) -> Iterator[tuple[int, float, str]]:
        for prio in sorted(self.levels, reverse=True):
            for ts, job_id in list(self.levels.get(prio, ())):
                yield prio, ts, job_id


class JobQueue:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._tenants: dict[str, _Tenant] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.jobs

    def add(self, job: Job) -> None:
        if job.id in self.jobs:
            self.jobs[job.id] = job
            return
        self.jobs[job.id] = job
        t = self._tenants.setdefault(job.tenant, _Tenant())
        bisect.insort(t.levels.setdefault(job.priority, []), (job.submitted_at.timestamp(), job.id))

    def remove(self, job_id: str) -> Job | None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return None
        t = self._tenants[job.tenant]
        level = t.levels[job.priority]
        key = (job.submitted_at.timestamp(), job.id)
        i = bisect.bisect_left(level, key)
        if i < len(level) and level[i] == key:
            del level[i]
        if not level:
            del t.levels[job.priority]
        if not t.levels:
            del self._tenants[job.tenant]
        return job

    def clear(self) -> None:
        self.jobs.clear()
        self._tenants.clear()

    def ordered(self, usage: dict[str, float] | None = None) -> Iterator[Job]:
        """Every queued job, in the order they should be placed. `usage` maps a tenant to the GPUs it holds;
        the caller adds to it as it places jobs, and later picks in the same pass see that.

        Lazy: a scheduler pass that stops early pays only for what it took. Jobs removed while iterating are
        skipped."""
        usage = usage if usage is not None else {}
        heap: list[tuple[int, float, float, str, str, Iterator]] = []
        for tenant, t in self._tenants.items():
            it = t.order()
            head = next(it, None)
            if head is not None:
                heap.append((-head[0], usage.get(tenant, 0.0), head[1], head[2], tenant, it))
        heapq.heapify(heap)
        while heap:
            _, _, _, job_id, tenant, it = heapq.heappop(heap)
            job = self.jobs.get(job_id)
            if job is not None:
                yield job
            head = next(it, None)
            if head is not None:
                heapq.heappush(heap, (-head[0], usage.get(tenant, 0.0), head[1], head[2], tenant, it))
