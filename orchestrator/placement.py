"""The orchestrator's placement client: asks the AI core, falls back to a documented heuristic, records decisions.

Fallback heuristic (used when the AI core has no model, cannot be reached, times out or errs): among the
candidates that pass the AI core's hard constraints (healthy, fits in unreserved memory with room for the peaks of
the jobs sharing the GPU, `ai_core.policies.memory_safe_mask`), best fit on memory - the GPU
left with the least unreserved memory after placing - then least utilised; for a multi-GPU job, the node whose
best-fitting GPUs leave the least memory over in total. The decision says `policy="heuristic"` and why, in
`fallback_reason`: NO_MODEL, TIMEOUT, UNREACHABLE, CIRCUIT_OPEN or AI_CORE_ERROR <status> <code>.

After a few consecutive transport failures the client stops calling the AI core for a short while (circuit
breaker), so an AI core that is down costs the scheduler no timeouts; one probe call then tests it again.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import httpx
import numpy as np
import orjson
from pydantic import ValidationError

from ai_core.errors import NoFeasibleCandidate
from ai_core.features import table_from_candidates
from ai_core.policies import (
    SET_AGG,
    choose,
    heuristic_scores,
    memory_safe_mask,
    memory_safe_one,
    rejection_reason,
    rejection_reasons,
)
from orchestrator.errors import ResourceExhausted
from services import subjects
from services.schemas.base import utcnow
from services.schemas.placement import Candidate, JobFeatures, PlacementDecision, PlacementRequest

log = logging.getLogger("aether.placement")

DEFAULT_TIMEOUT_S = 0.5
FAILURES_TO_OPEN = 3
OPEN_FOR_S = 5.0

_PLACEMENT_COLUMNS = ("job_id", "time", "policy", "fallback_reason", "model_version", "chosen_uuid", "chosen_node",
                      "chosen_uuids", "runner_up_uuid", "candidates", "scores", "contributions",
                      "runner_up_contributions", "rejected", "latency_ms", "job_features", "chosen_state")
_PLACEMENT_TYPES = ("text", "timestamptz", "text", "text", "text", "text", "text", "text", "text", "int", "text", "text",
                    "text", "text", "float8", "text", "text")


@functools.lru_cache(maxsize=8)
def insert_sql(first: int) -> str:
    """Store decisions (row i of each array of `columns` is one), in their order, in one statement; parameters
    $first.. on, after those of the statement it joins (admission stores them with its jobs: one round trip less
    under its lock). JSON travels as text; `chosen_uuids`, of any length, as a JSON array."""
    p = [f"${i}::{t}[]" for i, t in zip(range(first, first + len(_PLACEMENT_COLUMNS)), _PLACEMENT_TYPES, strict=True)]
    cols = ", ".join(_PLACEMENT_COLUMNS)
    return f"""
INSERT INTO placements ({cols})
SELECT job_id, time, policy, fallback_reason, model_version, chosen_uuid, chosen_node,
       ARRAY(SELECT jsonb_array_elements_text(chosen_uuids::jsonb)), runner_up_uuid, candidates, scores::jsonb,
       contributions::jsonb, runner_up_contributions::jsonb, rejected::jsonb, latency_ms, job_features::jsonb,
       chosen_state::jsonb
FROM unnest({", ".join(p)}) WITH ORDINALITY AS u({cols}, n)
ORDER BY n"""


def columns(decisions: list[PlacementDecision]) -> list[list]:
    """The arguments of `insert_sql`."""
    rows = [_row(d) for d in decisions]
    return [list(c) for c in zip(*rows, strict=True)]


# Up to this many candidates, a one-GPU job is decided on plain floats (`memory_safe_one`): numpy's per-call cost
# would be most of the work. The scheduler offers 32 by default.
SMALL = 64


def heuristic_decision(job_id: str | None, job: JobFeatures, candidates: list[Candidate],
                       reason: str | None) -> PlacementDecision:
    """The documented fallback. Raises ResourceExhausted when no candidate (or no node with enough) fits."""
    t0 = time.perf_counter()
    if job.gpus == 1 and len(candidates) <= SMALL:
        picked = _one_gpu(job, candidates)
        if picked is not None:
            return _decision(job_id, reason, t0, *picked)
    table = table_from_candidates(candidates)
    # The AI core's own hard constraints, memory growth included: a fallback must not pack jobs onto a GPU that
    # their peaks would run out of memory (nor place what the AI core just refused as RESOURCE_EXHAUSTED).
    mask = memory_safe_mask(table, job)
    rejected = rejection_reasons(table, job, mask) if not mask.all() else {}
    if not mask.all():
        table = table.take(np.flatnonzero(mask))
    scores = heuristic_scores(table, job)
    try:
        idx, _ = choose(scores, table.node_ids, job.gpus, SET_AGG["heuristic"])
    except NoFeasibleCandidate as exc:
        raise ResourceExhausted(exc.message, job_id=job_id, details={"candidates": len(candidates)}) from None
    others = np.ones(len(scores), dtype=bool)
    others[idx] = False
    runner_up = table.uuids[int(np.flatnonzero(others)[np.argmin(scores[others])])] if others.any() else None
    return _decision(job_id, reason, t0, [table.uuids[i] for i in idx], table.nodes[int(idx[0])], table.uuids,
                     scores, runner_up, rejected)


def _one_gpu(job: JobFeatures, candidates: list[Candidate]
             ) -> tuple[list[str], str, list[str], list[float], str | None, dict[str, str]] | None:
    """`heuristic_decision` for a one-GPU job, candidate by candidate; None when none is feasible (the table path
    then raises the usual error)."""
    need = float(job.gpu_mem_mb)
    feasible: list[Candidate] = []
    scores: list[float] = []
    rejected: dict[str, str] = {}
    for c in candidates:
        safe, unreserved, running = memory_safe_one(c, job)
        if safe:
            feasible.append(c)
            scores.append(math.floor(c.mem_free_mb - need) + c.util_gpu_pct / 101.0)
        else:
            rejected[c.gpu_uuid] = rejection_reason(c.healthy, unreserved, running, need)
    if not feasible:
        return None
    best = min(range(len(scores)), key=scores.__getitem__)  # the first of equals, as numpy's argmin
    second = min((i for i in range(len(scores)) if i != best), key=scores.__getitem__, default=None)
    return ([feasible[best].gpu_uuid], feasible[best].node, [c.gpu_uuid for c in feasible], scores,
            feasible[second].gpu_uuid if second is not None else None, rejected)


def _round3(scores) -> list[float]:
    """np.round(scores, 3), also for a plain list: the same multiply, round-half-even and divide, without the array."""
    if isinstance(scores, list):
        try:
            return [round(x * 1000.0) / 1000.0 for x in scores]
        except (ValueError, OverflowError):  # NaN or infinity (the model's bounds keep them out): as numpy does
            pass
    return np.round(scores, 3).tolist()


def _decision(job_id: str | None, reason: str | None, t0: float, chosen: list[str], node: str, uuids: list[str],
              scores, runner_up: str | None, rejected: dict[str, str]) -> PlacementDecision:
    # Every value is computed here from validated candidates: constructed without validating again (once per
    # job in the scheduler's hot loop). Every field is given, as model_construct does not copy default factories.
    return PlacementDecision.model_construct(
        v=1, job_id=job_id, chosen_uuid=chosen[0], chosen_node=node, chosen_uuids=chosen,
        policy="heuristic", fallback_reason=reason, model_version=None,
        scores=dict(zip(uuids, _round3(scores), strict=True)), contributions=[],
        runner_up_uuid=runner_up, runner_up_contributions=[], rejected=rejected,
        latency_ms=round((time.perf_counter() - t0) * 1000.0, 3), time=utcnow(), job=None, chosen_state=[])


class Placer:
    """Decides where a job goes. Give it an httpx client (shared, keep-alive) or a base URL, and optionally the
    asyncpg pool and NATS client used by `record`."""

    def __init__(self, base_url: str | None = None, *, http: httpx.AsyncClient | None = None, pool: Any = None,
                 nc: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S, failures_to_open: int = FAILURES_TO_OPEN,
                 open_for_s: float = OPEN_FOR_S, explain: bool = True) -> None:
        if http is None and base_url is None:
            raise ValueError("give the AI core's base URL or an httpx client")
        self.base_url = (base_url or str(http.base_url)).rstrip("/")
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_keepalive_connections=32))
        self.pool = pool
        self.nc = nc
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 0.25))
        self.failures_to_open = failures_to_open
        self.open_for_s = open_for_s
        self.explain = explain
        self._failures = 0
        self._open_until = 0.0
        self.fallbacks: dict[str, int] = {}

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    # --- deciding -----------------------------------------------------------------------------------------
    async def place(self, job_id: str, job: JobFeatures, candidates: list[Candidate]) -> PlacementDecision:
        """The AI core's decision, or the heuristic's with the reason. Raises ResourceExhausted only when no
        candidate can take the job at all."""
        if not candidates:
            raise ResourceExhausted("no candidate GPUs for this job", job_id=job_id)
        decision, reason = await self._ask(job_id, job, candidates)
        if decision is None:
            self.fallbacks[reason.split(" ")[0]] = self.fallbacks.get(reason.split(" ")[0], 0) + 1
            decision = heuristic_decision(job_id, job, candidates, reason)
        by_uuid = {c.gpu_uuid: c for c in candidates}
        decision.job = job
        decision.chosen_state = [by_uuid[u] for u in (decision.chosen_uuids or [decision.chosen_uuid])
                                 if u in by_uuid]
        return decision

    async def _ask(self, job_id: str, job: JobFeatures,
                   candidates: list[Candidate]) -> tuple[PlacementDecision | None, str]:
        now = time.monotonic()
        if now < self._open_until:
            return None, "CIRCUIT_OPEN (AI core failing; retrying in a few seconds)"
        try:
            body = PlacementRequest(job_id=job_id, job=job, candidates=candidates, explain=self.explain)
        except ValidationError as exc:  # e.g. more candidates than the AI core takes in one request
            return None, f"AI_CORE_ERROR request not sent: {exc.errors()[0]['msg']}"
        try:
            resp = await self.http.post(f"{self.base_url}/v1/place", content=body.model_dump_json(),
                                        headers={"content-type": "application/json"}, timeout=self.timeout)
        except httpx.TimeoutException:
            return self._failed("TIMEOUT", job_id)
        except httpx.TransportError as exc:
            return self._failed(f"UNREACHABLE ({exc.__class__.__name__})", job_id)
        if resp.status_code == 200:
            try:
                decision = PlacementDecision.model_validate_json(resp.content)
            except ValidationError as exc:
                return self._failed(f"AI_CORE_ERROR bad answer: {exc.errors()[0]['msg']}", job_id)
            self._failures = 0
            return decision, ""
        code = _error_code(resp)
        if code == "NO_MODEL":
            self._failures = 0  # the service is up and says so quickly: no need to trip the breaker
            return None, "NO_MODEL"
        if code == "RESOURCE_EXHAUSTED":
            self._failures = 0
            # The heuristic applies the cluster's constraints (healthy, declared memory fits) and says so when
            # nothing passes them; it does not apply the AI core's stricter room-for-growth rule, so a job refused
            # only for that is placed by best fit. Keeping such a job queued is the scheduler's call.
            return None, "RESOURCE_EXHAUSTED"
        return self._failed(f"AI_CORE_ERROR {resp.status_code} {code}", job_id)

    def _failed(self, reason: str, job_id: str) -> tuple[None, str]:
        self._failures += 1
        if self._failures >= self.failures_to_open:
            self._open_until = time.monotonic() + self.open_for_s
            self._failures = self.failures_to_open - 1  # after the pause, one more failure re-opens it
            log.warning("AI core failing; placing with the heuristic for a while",
                        extra={"reason": reason, "pause_s": self.open_for_s, "job_id": job_id})
        else:
            log.warning("AI core call failed; heuristic used", extra={"reason": reason, "job_id": job_id})
        return None, reason

    # --- recording ----------------------------------------------------------------------------------------
    async def record(self, pool: Any = None, decision: PlacementDecision | None = None, *,
                     publish: bool = True) -> int:
        """Store the decision in `placements` (with `pool`: an asyncpg pool or a connection inside the caller's
        transaction; default the constructor's) and publish it on `aether.placement`. Also callable as
        `record(decision)`. Returns the row id. A failed publish is logged, never raised: the row is the record."""
        if isinstance(pool, PlacementDecision):
            pool, decision = None, pool
        if decision is None:
            raise TypeError("record() needs a decision")
        db = pool if pool is not None else self.pool
        if db is None:
            raise ValueError("no database pool to record the placement in")
        row_id = await db.fetchval(insert_sql(1) + " RETURNING id", *([v] for v in _row(decision)))
        if publish:
            await self.publish(decision)
        return int(row_id)

    @staticmethod
    async def record_many(conn: Any, decisions: list[PlacementDecision]) -> None:
        """Store several decisions in one statement, on `conn` inside the caller's transaction: the scheduler
        commits a pass's placements with their jobs' transitions. Not published (see `publish`)."""
        if decisions:
            await conn.execute(insert_sql(1), *columns(decisions))

    async def publish(self, decision: PlacementDecision) -> bool:
        if self.nc is None:
            return False
        try:
            await self.nc.publish(subjects.PLACEMENT, decision.to_bytes())
            return True
        except Exception as exc:  # the bus being away must not lose the decision: it is in the database
            log.warning("placement not published", extra={"job_id": decision.job_id, "error": repr(exc)})
            return False


def _row(d: PlacementDecision) -> tuple:
    """One decision's row of `insert_sql`."""
    return (d.job_id, d.time or utcnow(), d.policy, d.fallback_reason, d.model_version, d.chosen_uuid, d.chosen_node,
            orjson.dumps(d.chosen_uuids or [d.chosen_uuid]).decode(), d.runner_up_uuid, len(d.scores) + len(d.rejected), _json(d.scores),
            _dump_list(d.contributions), _dump_list(d.runner_up_contributions), _json(d.rejected), d.latency_ms,
            d.job.model_dump_json() if d.job is not None else None,
            _dump_list(d.chosen_state) if d.chosen_state else None)


def _json(value: dict) -> str:
    # orjson: several times faster than json.dumps on a decision's scores, and it writes a non-finite float as null
    # where json.dumps writes NaN, which PostgreSQL's jsonb refuses.
    return orjson.dumps(value).decode()


def _dump_list(items: list) -> str:
    return "[" + ",".join(i.model_dump_json() for i in items) + "]"


def _error_code(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("code") or resp.status_code)
    except (ValueError, AttributeError):
        return str(resp.status_code)
