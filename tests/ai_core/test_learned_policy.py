"""The learned policy places jobs where they run faster than least-utilised does, on held-out traces in a world
perturbed away from the one it was trained in.

Measured: mean run-time slowdown (first start to end, over the run time alone), i.e. the quality of the GPUs
chosen, which is what the model predicts. End-to-end mean JCT also depends on queueing dynamics the per-job
model does not see; bench/placement_quality.py reports it (and, at this training size, it is not better).
"""

from ai_core.dataset import EVAL_SEED_BASE
from ai_core.model import PlacementModel
from ai_core.policies import make_policy
from ai_core.scoring import ModelPolicy
from ai_core.simulator import ClusterSim, SimParams
from ai_core.traces import synthetic_trace

# Chosen before looking at any result: the first three evaluation seeds. Training used seed 21 (see conftest).
EVAL_SEEDS = (EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2, EVAL_SEED_BASE + 3)
GPUS = 32


def test_learned_policy_places_jobs_where_they_run_faster_than_least_utilised(small_booster):
    model = PlacementModel(small_booster, "test", {})
    totals = {"least_utilised": 0.0, "xgboost": 0.0}
    warm = {"least_utilised": 0, "xgboost": 0}
    for seed in EVAL_SEEDS:
        trace = synthetic_trace(600, GPUS, load=0.8, seed=seed)
        world = SimParams().perturbed(seed, 0.2)  # interference, thermal and load-time coefficients +-20 %
        for name, policy in (("least_utilised", make_policy("least_utilised", n_gpus=GPUS)),
                             ("xgboost", ModelPolicy(model))):
            result = ClusterSim(trace, policy, n_gpus=GPUS, params=world, seed=seed).run()
            assert result.unfinished == 0 and result.completed == len(trace)
            totals[name] += result.mean_run_slowdown
            warm[name] += result.warm_starts
    assert totals["xgboost"] < totals["least_utilised"], totals
    # One reason it is faster: it learnt that a resident model saves the load time.
    assert warm["xgboost"] > warm["least_utilised"], warm


def test_learned_policy_never_runs_a_gpu_out_of_memory(small_booster):
    # Jobs outgrow their declared memory (training by up to ~20 %): packing on declared memory alone ends in OOM
    # kills, which the AI core's hard constraints (room for everyone's growth on a shared GPU) rule out.
    seed = EVAL_SEED_BASE + 4
    trace = synthetic_trace(500, 16, load=0.8, seed=seed)
    world = SimParams().perturbed(seed, 0.2)
    packed = ClusterSim(trace, make_policy("best_fit", n_gpus=16), n_gpus=16, params=world, seed=seed).run()
    learned = ClusterSim(trace, ModelPolicy(PlacementModel(small_booster, "test", {})), n_gpus=16, params=world,
                         seed=seed).run()
    assert packed.oom_failures > 0  # the trace does provoke them
    assert learned.oom_failures == 0 and learned.completed == len(trace) and learned.unfinished == 0
