"""Hard constraints before any policy; set choice on one node; the documented heuristic."""

import numpy as np
import pytest

from ai_core import features as F
from ai_core.errors import NoFeasibleCandidate
from ai_core.policies import choose, feasible_mask, heuristic_scores, least_utilised_scores, rejection_reasons
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
