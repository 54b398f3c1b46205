"""The scheduler's door to placement: `orchestrator.placement.Placer` (AI core with its heuristic fallback), and a
minimal best-fit heuristic of our own for when that module cannot be loaded at all."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from orchestrator.runtime import Runtime
from services.schemas import Candidate, JobFeatures, PlacementDecision
from services.schemas.base import utcnow

log = logging.getLogger("aether.jobs.placing")


def best_fit(job_id: str, job: JobFeatures, candidates: list[Candidate], reason: str) -> PlacementDecision:
    """Best fit on memory, then least utilised; for k GPUs, the node whose k best fits leave the least over."""
    t0 = time.perf_counter()
    scores = {c.gpu_uuid: (c.mem_free_mb - job.gpu_mem_mb) + c.util_gpu_pct / 101.0 for c in candidates}
    if job.gpus == 1:
        best = min(candidates, key=lambda c: (scores[c.gpu_uuid], c.node, c.index))
        chosen = [best]
    else:
        by_node: dict[str, list[Candidate]] = {}
        for c in candidates:
            by_node.setdefault(c.node, []).append(c)
        sets = [sorted(cs, key=lambda c: scores[c.gpu_uuid])[:job.gpus] for cs in by_node.values()
                if len(cs) >= job.gpus]
        chosen = min(sets, key=lambda cs: (max(scores[c.gpu_uuid] for c in cs), cs[0].node))
    return PlacementDecision(job_id=job_id, chosen_uuid=chosen[0].gpu_uuid, chosen_node=chosen[0].node,
                             chosen_uuids=[c.gpu_uuid for c in chosen], policy="heuristic", fallback_reason=reason,
                             scores=scores, latency_ms=(time.perf_counter() - t0) * 1000, time=utcnow())


class Placement:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.placer: Any = None
        try:
            from orchestrator.placement import Placer, columns, insert_sql  # the AI engineer's module
        except ImportError as exc:
            log.warning("orchestrator.placement not available; placing with the built-in best-fit heuristic",
                        extra={"error": repr(exc)})
            return
        self.placer = Placer(rt.settings.ai_core_url, http=rt.http, pool=rt.pool, nc=rt.nc)
        self._rows = insert_sql, columns

    async def place(self, job_id: str, job: JobFeatures, candidates: list[Candidate]) -> PlacementDecision:
        if self.placer is None:
            return best_fit(job_id, job, candidates, "placement module not installed")
        try:
            return await self.placer.place(job_id, job, candidates)
        except Exception as exc:  # the placer falls back by itself; this is the last line
            log.exception("placer failed; using best fit", extra={"job_id": job_id})
            return best_fit(job_id, job, candidates, f"placer error: {exc.__class__.__name__}")

    async def record(self, conn: Any, decisions: list[PlacementDecision]) -> None:
        """Store decisions in `placements` on `conn`, inside the caller's transaction (the job's SCHEDULED
        transition and its decision commit together, at no extra commit), in one round trip."""
        if self.placer is None:
            return
        await self.placer.record_many(conn, decisions)

    def rows(self, decisions: list[PlacementDecision]) -> tuple[Callable[[int], str], list] | None:
        """`record` as part of a statement of the caller's (`store.insert_jobs`'s `also`); None without a placer."""
        if self.placer is None or not decisions:
            return None
        sql, columns = self._rows
        return sql, columns(decisions)

    async def publish(self, decisions: list[PlacementDecision]) -> None:
        """After the commit: the decisions on `aether.placement`, for custom tooling."""
        if self.placer is None:
            return
        for d in decisions:
            await self.placer.publish(d)
