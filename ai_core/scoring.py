"""One placement decision: hard constraints, every candidate scored in one batch, the best GPU (or set of GPUs on
one node) chosen, and the feature contributions behind the choice for the chosen GPU and the runner-up."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ai_core import features as F
from ai_core.errors import NoFeasibleCandidate, NoModel
from ai_core.model import PlacementModel
from ai_core.policies import Policy, choose, memory_safe_mask, rejection_reasons
from services.fastdecode import FastDecoder
from services.schemas.base import utcnow
from services.schemas.placement import FeatureContribution, JobFeatures, PlacementDecision, PlacementRequest

# Cost (log units) of taking a GPU on a node whose other GPUs are all idle, scaled by that idle share: a job that
# spreads over empty nodes leaves no whole node for the multi-GPU jobs behind it, which then queue.
CONSOLIDATION = 0.1


def node_idle_share(x: np.ndarray, node_ids: np.ndarray) -> np.ndarray:
    """Per candidate: the share of its node's (offered) GPUs that run nothing."""
    idle = (F.jobs_running_column(x) == 0).astype(np.float64)
    n_nodes = int(node_ids.max()) + 1 if len(node_ids) else 0
    per_node_idle = np.bincount(node_ids, weights=idle, minlength=n_nodes)
    per_node = np.bincount(node_ids, minlength=n_nodes)
    return per_node_idle[node_ids] / np.maximum(per_node[node_ids], 1)


# Busy candidates whose co-runner delay is worked out in the first round when no idle GPU gives a bound.
FIRST_ROUND = 32


def costs(model: PlacementModel, x: np.ndarray, node_ids: np.ndarray | None = None, *,
          prune: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(predicted log time of the job, decision cost in the same log units) per candidate row.

    The model predicts the job's own completion time. On a GPU that already runs jobs, the newcomer slows them
    about as much as they slow it (interference is roughly mutual), so the cost adds, for each job already
    there, the newcomer's own predicted slowdown on that GPU against the same GPU empty (both from the model):
    cost = time x (1 + jobs_running x max(0, slowdown - 1)). Without this a warm start on a busy GPU looks
    free to the newcomer while the jobs it lands on pay for it.

    prune=True (single-GPU decisions): the delay term needs a second prediction per busy GPU (the GPU emptied),
    but it only ever adds to the cost, so a busy GPU whose cost without it is already above the best exact
    cost cannot be chosen: its delay is not computed and its cost stays that lower bound. The choice and the
    runner-up are the same; only the scores of GPUs that could be neither are lower bounds.
    """
    pred = model.predict_log(x).astype(np.float64)
    cost = pred.copy()
    if node_ids is not None and len(node_ids):
        cost += CONSOLIDATION * node_idle_share(x, node_ids)
    running = F.jobs_running_column(x).astype(np.float64)
    busy = running > 0
    if not busy.any():
        return pred, cost

    def add_delay(rows: np.ndarray) -> None:
        if len(rows):
            alone = model.predict_log(F.emptied(x[rows])).astype(np.float64)
            slowdown = np.maximum(0.0, np.expm1(pred[rows] - alone))
            cost[rows] += np.log1p(running[rows] * slowdown)

    if not prune:
        add_delay(np.flatnonzero(busy))
        return pred, cost
    lower = cost.copy()
    if np.count_nonzero(~busy) < 2:  # too few idle GPUs to bound with: the most promising busy ones first
        first = np.flatnonzero(busy)[np.argsort(lower[busy], kind="stable")[:FIRST_ROUND]]
        add_delay(first)
        busy[first] = False
    exact = cost[~busy]
    # The second best exact cost: the runner-up (explained next to the choice) is then exact too.
    bound = float(np.partition(exact, 1)[1] if len(exact) > 1 else exact[0])
    add_delay(np.flatnonzero(busy & (lower <= bound)))
    return pred, cost


class ModelPolicy(Policy):
    """The learned policy, for the simulator: the same decision rule as /v1/place."""

    name = "xgboost"

    def __init__(self, model: PlacementModel) -> None:
        self.model = model
        model.set_threads(1)  # a few dozen rows per decision: threads would only wait on each other

    def scores(self, job: JobFeatures, table: F.CandidateTable, positions: np.ndarray) -> np.ndarray:
        return costs(self.model, F.matrix(job, table.num), table.node_ids, prune=job.gpus == 1)[1]

    def select(self, job: JobFeatures, table: F.CandidateTable, positions: np.ndarray) -> np.ndarray:
        """As /v1/place: only GPUs that pass `memory_safe_mask`; raises NoFeasibleCandidate (the job waits)."""
        safe = np.flatnonzero(memory_safe_mask(table, job))
        if job.gpus > 1 and np.bincount(table.node_ids[safe]).max(initial=0) < job.gpus:
            raise NoFeasibleCandidate(f"no node has {job.gpus} GPUs with room for the job")  # before any scoring
        sub = table if len(safe) == len(table) else table.take(safe)
        idx, _ = choose(self.scores(job, sub, positions[safe]), sub.node_ids, job.gpus, "max")
        return safe[idx]


def _top(contribs: np.ndarray, row: np.ndarray, n: int) -> list[FeatureContribution]:
    values = contribs[:-1]  # the last column is the bias, the same for every row
    order = np.argsort(-np.abs(values), kind="stable")[:n]
    out = []
    for i in order:
        v = float(row[i])
        out.append(FeatureContribution(feature=F.FEATURES[i], value=None if math.isnan(v) else round(v, 4),
                                       contribution=round(float(values[i]), 5)))
    return out


@dataclass
class Parsed:
    """A placement request reduced to what the decision needs: the candidates as columns."""

    job_id: str | None
    job: JobFeatures
    table: F.CandidateTable
    explain: bool = True


# The request's own model, compiled (services/fastdecode.py): msgspec checks every bound and type the models
# check, without a model object per candidate.
_WIRE = FastDecoder(PlacementRequest)


def parse_fast(body: bytes) -> Parsed | None:
    """Parse a /v1/place body straight to columns: msgspec checks it against the compiled PlacementRequest and the
    candidates go to the table as they are (for 1,000 candidates about half the time of validating Candidate
    models and reading them back). What msgspec does not accept outright (anything pydantic would coerce, or
    refuse) gives None: the caller validates with PlacementRequest, which names the field."""
    try:
        wire = _WIRE.decode_struct(body)
    except _WIRE.errors:
        return None
    return Parsed(wire.job_id, _WIRE.to_model(wire.job), F.table_from_wire(wire.candidates), wire.explain)


def place(request: PlacementRequest, model: PlacementModel | None, *, top_n: int = 8,
          exact_contributions: bool = False) -> PlacementDecision:
    """Decide for `request` with `model`. Raises NoModel without one, NoFeasibleCandidate when nothing fits."""
    t0 = time.perf_counter()
    if model is None:
        raise NoModel("no placement model is loaded; train one (python -m ai_core.train --synthetic N)",
                      job_id=request.job_id)
    parsed = Parsed(request.job_id, request.job, F.table_from_candidates(request.candidates), request.explain)
    return decide(parsed, model, top_n=top_n, exact_contributions=exact_contributions, t0=t0)


def decide(request: Parsed, model: PlacementModel | None, *, top_n: int = 8, exact_contributions: bool = False,
           t0: float | None = None) -> PlacementDecision:
    """`place` for a request already reduced to columns (`parse_fast`)."""
    t0 = time.perf_counter() if t0 is None else t0
    if model is None:
        raise NoModel("no placement model is loaded; train one (python -m ai_core.train --synthetic N)",
                      job_id=request.job_id)
    job, table = request.job, request.table
    n_candidates = len(table)
    mask = memory_safe_mask(table, job)
    rejected: dict[str, str] = {}
    if not mask.all():
        rejected = rejection_reasons(table, job, mask)
        table = table.take(np.flatnonzero(mask))
    x = F.matrix(job, table.num)
    _, cost = costs(model, x, table.node_ids, prune=job.gpus == 1)
    try:
        idx, _ = choose(cost, table.node_ids, job.gpus, "max")
    except NoFeasibleCandidate as exc:
        raise NoFeasibleCandidate(exc.message, job_id=request.job_id,
                                  details={"candidates": n_candidates,
                                           "rejected": dict(list(rejected.items())[:50])}) from None
    # For a set, the GPU that paces the job (highest predicted time) is the one whose reasons matter.
    main = int(idx[int(np.argmax(cost[idx]))])
    others = np.ones(len(cost), dtype=bool)
    others[idx] = False
    runner_up = int(np.flatnonzero(others)[np.argmin(cost[others])]) if others.any() else None
    seconds = F.job_max_duration_s(job) * np.exp(cost)
    contributions: list[FeatureContribution] = []
    runner_contribs: list[FeatureContribution] = []
    if request.explain:
        # Only the chosen GPU and the runner-up are explained: attribution costs far more per row than scoring.
        rows = [main] if runner_up is None else [main, runner_up]
        c = model.contributions(x[rows], exact=exact_contributions)
        contributions = _top(c[0], x[main], top_n)
        if runner_up is not None:
            runner_contribs = _top(c[1], x[runner_up], top_n)
    chosen = [table.uuids[i] for i in idx]
    # Every value below is computed here from validated input: construct without validating again. Every field
    # is given: a defaulted one makes model_construct inspect its default factory (~1 ms a call).
    return PlacementDecision.model_construct(
        v=1, job_id=request.job_id, chosen_uuid=chosen[0], chosen_node=table.nodes[int(idx[0])],
        chosen_uuids=chosen, policy="xgboost", fallback_reason=None, model_version=model.version,
        scores=dict(zip(table.uuids, np.round(seconds, 3).tolist(), strict=True)),
        contributions=contributions,
        runner_up_uuid=table.uuids[runner_up] if runner_up is not None else None,
        runner_up_contributions=runner_contribs, rejected=rejected,
        latency_ms=round((time.perf_counter() - t0) * 1000.0, 3), time=utcnow(), job=None, chosen_state=[],
    )
