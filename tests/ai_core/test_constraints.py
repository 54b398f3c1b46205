"""Hard constraints before any policy; set choice on one node; the documented heuristic."""

import numpy as np
import pytest

from ai_core import features as F
from ai_core.dataset import EVAL_SEED_BASE
from ai_core.errors import NoFeasibleCandidate
from ai_core.policies import (
    MEM_GROWTH,
    choose,
    feasible_mask,
    heuristic_scores,
    least_utilised_scores,
    memory_safe_mask,
    rejection_reasons,
    unreserved_mb,
)
from ai_core.simulator import SimParams
from tests.ai_core.conftest import gpu, job


def test_unhealthy_and_too_small_are_refused_with_reasons():
    cands = [gpu(0, mem_free_mb=10000), gpu(1, healthy=False), gpu(2, mem_free_mb=30000)]
    t = F.table_from_candidates(cands)
    mask = feasible_mask(t, job(gpu_mem_mb=20000))
    assert mask.tolist() == [False, False, True]
    reasons = rejection_reasons(t, job(gpu_mem_mb=20000), mask)
    assert reasons == {"GPU-n1-0": "needs 20000 MB, 10000 MB unreserved", "GPU-n1-1": "unhealthy"}


def test_choose_single_and_set_on_one_node():
    scores = np.array([5.0, 1.0, 3.0, 0.5, 9.0, 2.0])
    nodes = np.array([0, 0, 0, 1, 1, 1])
    idx, value = choose(scores, nodes, 1)
    assert idx.tolist() == [3] and value == 0.5
    # Two GPUs: node 0 offers {1.0, 3.0} (slowest 3.0), node 1 offers {0.5, 2.0} (slowest 2.0): node 1 wins.
    idx, value = choose(scores, nodes, 2, "max")
    assert sorted(idx.tolist()) == [3, 5] and value == 2.0
    # Three GPUs: node 0 (max 5) beats node 1 (max 9).
    idx, _ = choose(scores, nodes, 3, "max")
    assert sorted(idx.tolist()) == [0, 1, 2]
    with pytest.raises(NoFeasibleCandidate):
        choose(scores, nodes, 4)
    with pytest.raises(NoFeasibleCandidate):
        choose(np.array([]), np.array([], dtype=np.int64), 1)


def test_heuristic_is_best_fit_then_least_utilised():
    cands = [gpu(0, mem_free_mb=60000, util_gpu_pct=0), gpu(1, mem_free_mb=25000, util_gpu_pct=90),
             gpu(2, mem_free_mb=25000, util_gpu_pct=10), gpu(3, mem_free_mb=80000, util_gpu_pct=0)]
    t = F.table_from_candidates(cands)
    s = heuristic_scores(t, job(gpu_mem_mb=20000))
    # Tightest fit first (5000 MB left on GPUs 1 and 2); between them the less utilised.
    assert int(np.argmin(s)) == 2
    assert int(np.argmin(least_utilised_scores(t, job()))) == 3  # 0 % util and the most memory free


def test_a_shared_gpu_needs_room_for_everyones_growth():
    # A 40 GB training job already there: grown to its type's peak with a 30 GB training newcomer's, 84.7 GB is
    # past the 80 GB board, although the newcomer's declared 30 GB fits the 41.5 GB unreserved.
    shared = gpu(0, mem_free_mb=81559 - 40000, mem_used_mb=40000, jobs_running=1, job_types=["training"])
    t = F.table_from_candidates([shared, gpu(1)])
    j = job(gpu_mem_mb=30000, job_type="training")
    assert feasible_mask(t, j).tolist() == [True, True]
    safe = memory_safe_mask(t, j)
    assert safe.tolist() == [False, True]
    assert rejection_reasons(t, j, safe)["GPU-n1-0"].endswith("leave no room for growth")
    # An inference job hardly grows: 48.4 + 21 GB fits.
    assert memory_safe_mask(t, job(gpu_mem_mb=20000, job_type="inference")).tolist() == [True, True]
    # Alone, a job may take (nearly) the whole board: there is nobody else to run out of memory with.
    assert memory_safe_mask(t, job(gpu_mem_mb=80000, job_type="training")).tolist() == [False, True]
    # Co-runners of a type we do not know are taken to grow as much as any.
    odd = F.table_from_candidates([gpu(0, mem_free_mb=81559 - 40000, jobs_running=1, job_types=["finetune"])])
    assert memory_safe_mask(odd, j).tolist() == [False]


def test_memory_in_use_that_nobody_reserved_is_not_free():
    t = F.table_from_candidates([gpu(0, mem_free_mb=81559, mem_used_mb=60000)])  # a process nobody placed
    assert unreserved_mb(t).tolist() == [81559 - 60000]
    assert memory_safe_mask(t, job(gpu_mem_mb=30000)).tolist() == [False]


def test_growth_allowances_cover_the_simulated_worlds():
    # The evaluation perturbs every world by up to 20 %; growth ranges move by a quarter of that.
    for seed in range(EVAL_SEED_BASE, EVAL_SEED_BASE + 300):
        world = SimParams().perturbed(seed, 0.2)
        for t, (_, hi) in zip(F.JOB_TYPES, world.mem_growth, strict=True):
            assert hi <= MEM_GROWTH[t], (seed, t, hi)


def test_the_orchestrators_fallback_keeps_the_growth_constraint():
    from orchestrator.errors import ResourceExhausted
    from orchestrator.placement import heuristic_decision

    # Best fit alone would pick the shared GPU (tightest); its co-runner's growth rules it out.
    shared = gpu(0, mem_free_mb=81559 - 40000, mem_used_mb=40000, jobs_running=1, job_types=["training"])
    d = heuristic_decision("j1", job(gpu_mem_mb=30000, job_type="training"), [shared, gpu(1)], "NO_MODEL")
    assert d.chosen_uuid == "GPU-n1-1" and d.policy == "heuristic" and d.fallback_reason == "NO_MODEL"
    assert d.rejected["GPU-n1-0"].endswith("leave no room for growth")
    with pytest.raises(ResourceExhausted):
        heuristic_decision("j2", job(gpu_mem_mb=30000, job_type="training"), [shared], "NO_MODEL")


def _random_candidates(rng: np.random.Generator, n: int) -> list:
    """Mixed candidates: idle and shared GPUs, known and unknown co-runner types, unhealthy ones, tied fits."""
    types = [*F.JOB_TYPES, "notebook"]
    out = []
    for i in range(n):
        total = float(rng.choice([24576, 81559]))
        used = float(rng.choice([0.0, rng.uniform(0, total)]))
        free = float(rng.choice([total - used, rng.uniform(0, total), 20000.0]))  # 20000: equal fits tie
        running = int(rng.integers(0, 4))
        co = [types[int(t)] for t in rng.integers(0, len(types), size=int(rng.integers(0, running + 2)))]
        out.append(gpu(i, node=f"n{i % 3}", mem_total_mb=total, mem_used_mb=used, mem_free_mb=free,
                       util_gpu_pct=float(rng.choice([0.0, 50.0, rng.uniform(0, 100)])), jobs_running=running,
                       job_types=co, healthy=bool(rng.random() > 0.1)))
    return out


def test_the_one_gpu_fallback_on_plain_floats_decides_as_the_table_does(monkeypatch):
    """`heuristic_decision` takes a one-GPU job candidate by candidate (few candidates): the same choice, runner-up,
    rounded scores and refusals, word for word, as the numpy table path it stands in for."""
    from orchestrator import placement as P
    from orchestrator.errors import ResourceExhausted

    def both(j, cands):
        out = []
        for small in (P.SMALL, 0):  # 0: every job through the table path
            monkeypatch.setattr(P, "SMALL", small)
            try:
                d = P.heuristic_decision("j", j, cands, "NO_MODEL")
                out.append((d.chosen_uuids, d.chosen_node, d.runner_up_uuid, d.scores, d.rejected))
            except ResourceExhausted as exc:
                out.append(("refused", exc.message))
        return out

    rng = np.random.default_rng(7)
    decided = refused = 0
    for case in range(600):
        cands = _random_candidates(rng, int(rng.integers(1, 40)))
        j = job(gpu_mem_mb=float(rng.choice([1024, 20000, rng.uniform(0, 90000)])),
                job_type=str(rng.choice([*F.JOB_TYPES, "notebook"])))
        fast, table = both(j, cands)
        assert fast == table, case
        refused += fast[0] == "refused"
        decided += fast[0] != "refused"
    assert decided > 300 and refused > 10  # both outcomes were exercised
