"""Features: one row per candidate, missing readings as NaN, co-runner counts, residency, derived headroom."""

import math

import numpy as np

from ai_core import features as F
from tests.ai_core.conftest import gpu, job


def col(x, name):
    return x[:, F.FEATURES.index(name)]


def test_matrix_rows_and_derived_values():
    cands = [gpu(0), gpu(1, mem_free_mb=30000, mem_used_mb=50000, util_gpu_pct=80, job_types=["training"],
                        jobs_running=1, model_resident=True, throttle_reasons=["sw_thermal"], temp_c=88)]
    x = F.matrix(job(gpu_mem_mb=20000, model="llama"), F.table_from_candidates(cands).num)
    assert x.shape == (2, len(F.FEATURES)) and x.dtype == np.float32
    assert col(x, "headroom_gb")[1] == np.float32((30000 - 20000) / 1024)
    assert col(x, "util_gpu").tolist() == [0.0, np.float32(0.8)]
    assert col(x, "co_training").tolist() == [0, 1]
    assert col(x, "model_resident").tolist() == [0, 1]
    assert col(x, "throttled_thermal").tolist() == [0, 1]
    # H100's slowdown threshold is 87 C: 88 C is one degree over.
    assert col(x, "temp_margin_c")[1] == np.float32(-1.0)
    assert col(x, "job_inference").tolist() == [1, 1] and col(x, "job_training").tolist() == [0, 0]
    assert col(x, "job_log_max_duration")[0] == np.float32(math.log(1800))


def test_missing_readings_are_nan_not_zero():
    x = F.matrix(job(), F.table_from_candidates([gpu(0, temp_c=0, power_w=0, power_limit_w=0,
                                                     max_sm_clock_mhz=0)]).num)
    for name in ("temp_c", "temp_margin_c", "power_frac", "clock_frac", "temp_rise_per_kw"):
        assert math.isnan(col(x, name)[0]), name


def test_co_same_type_and_defaults():
    c = gpu(0, job_types=["inference", "inference", "batch"], jobs_running=3)
    x = F.matrix(job(job_type="inference", expected_util_pct=None, max_duration_s=None), F.table_from_candidates([c]).num)
    assert col(x, "co_same_type")[0] == 2
    assert col(x, "jobs_running")[0] == 3
    assert col(x, "job_util")[0] == np.float32(F.DEFAULT_UTIL_PCT["inference"] / 100)
    assert col(x, "job_log_max_duration")[0] == np.float32(math.log(F.DEFAULT_MAX_DURATION_S))
    # An unknown job type is not one of the four: all type flags stay 0.
    y = F.matrix(job(job_type="finetune"), F.table_from_candidates([c]).num)
    assert sum(col(y, f"job_{t}")[0] for t in F.JOB_TYPES) == 0


def test_slowdown_temp_by_key_or_nvml_name():
    assert F.slowdown_temp("H100-80GB") == F.slowdown_temp("NVIDIA H100 80GB HBM3") == 87.0
    assert F.slowdown_temp("Some Future GPU") == F.DEFAULT_SLOWDOWN_TEMP_C
