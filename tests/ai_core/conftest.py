"""AI core fixtures: a small model trained once per session from the simulator, registries in temp folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_core.dataset import synthetic
from ai_core.model import PlacementModel, fit
from ai_core.registry import Registry
from services.schemas.placement import Candidate, JobFeatures
from tests.support.waiting import until  # noqa: F401  (re-exported for the tests here)

TRAIN_ROWS = 4000
TRAIN_SEED = 21


@pytest.fixture(scope="session")
def small_booster():
    """A real model trained once per session on a few thousand simulated placements (training seeds only)."""
    ds = synthetic(TRAIN_ROWS, seed=TRAIN_SEED, max_jobs_per_episode=400)
    booster, _ = fit(ds.x, ds.y, ds.groups, seed=TRAIN_SEED, threads=1)
    return booster


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def registry(model_dir) -> Registry:
    return Registry(model_dir)


@pytest.fixture
def small_model(small_booster) -> PlacementModel:
    return PlacementModel(small_booster, "test-version", {})


def gpu(i: int, node: str = "n1", **kw) -> Candidate:
    base = dict(gpu_uuid=f"GPU-{node}-{i}", node=node, index=i, gpu_model="NVIDIA H100 80GB HBM3",
                mem_total_mb=81559, mem_used_mb=0, mem_free_mb=81559, util_gpu_pct=0, temp_c=35, power_w=70,
                power_limit_w=700, sm_clock_mhz=345, max_sm_clock_mhz=1980)
    base.update(kw)
    return Candidate(**base)


def job(**kw) -> JobFeatures:
    return JobFeatures(**{"gpus": 1, "gpu_mem_mb": 20000, "job_type": "inference", "max_duration_s": 1800, **kw})
