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
