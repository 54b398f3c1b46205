"""Placement: POST /v1/place on the AI core, and decisions published on `aether.placement`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from services.schemas.base import BusMessage, StrictBody, UtcDatetime

# Far above any real GPU reading and well inside float32, the model's feature type: a larger number is refused
# (422) instead of becoming inf inside XGBoost.
Reading = Annotated[float, Field(ge=-1e9, le=1e9)]


class JobFeatures(BaseModel):
    """What placement knows of the job."""

    gpus: int = Field(default=1, ge=1)
    # Not Reading narrowed by Field(ge=0): pydantic keeps the last bound of a kind, and the Annotated one (-1e9)
    # came last, so a negative size was accepted.
    gpu_mem_mb: Annotated[float, Field(ge=0, le=1e9)] = 1024
    job_type: str = "batch"
    model: str | None = None
    expected_util_pct: Reading | None = None
    max_duration_s: Reading | None = None
    priority: int = 0


class Candidate(BaseModel):
    """One GPU that passed the hard constraints, with its live state."""

    gpu_uuid: str
    node: str
    index: int
    gpu_model: str = ""
    mem_total_mb: Reading
    mem_used_mb: Reading = 0
    mem_free_mb: Reading = Field(description="free after the memory already reserved by placed jobs")
    util_gpu_pct: Reading = 0
    util_mem_pct: Reading = 0
    temp_c: Reading = 0
    power_w: Reading = 0
    power_limit_w: Reading = 0
    sm_clock_mhz: Reading = 0
    max_sm_clock_mhz: Reading = 0
    throttle_reasons: list[str] = Field(default_factory=list)
    jobs_running: int = 0
    job_types: list[str] = Field(default_factory=list, description="types of the jobs already on the GPU")
    model_resident: bool = False
    healthy: bool = True


class PlacementRequest(StrictBody):
    v: Literal[1] = 1
    job_id: str | None = None
    job: JobFeatures
    candidates: list[Candidate] = Field(min_length=1, max_length=20000)
    explain: bool = True


class FeatureContribution(BaseModel):
    feature: str
    value: float | None
    contribution: float


class PlacementDecision(BusMessage):
    """The answer of /v1/place, stored in `placements` and published on `aether.placement`."""

    v: Literal[1] = 1
    job_id: str | None = None
    chosen_uuid: str
    chosen_node: str
    chosen_uuids: list[str] = Field(default_factory=list)
    policy: Literal["xgboost", "heuristic"] = "xgboost"
    fallback_reason: str | None = None
    model_version: str | None = None
    scores: dict[str, float] = Field(default_factory=dict,
                                     description="predicted completion time in s per candidate, lower is better")
    contributions: list[FeatureContribution] = Field(default_factory=list)
    runner_up_uuid: str | None = None
    runner_up_contributions: list[FeatureContribution] = Field(default_factory=list)
    latency_ms: float | None = None
    time: UtcDatetime | None = None
    # Added by the AI core engineer (optional, additive): why candidates were refused by the hard constraints,
    # and what the decision was made on (job features, state of the chosen GPUs), kept for learning from outcomes.
    rejected: dict[str, str] = Field(default_factory=dict, description="gpu_uuid -> why it was not a candidate")
    job: JobFeatures | None = None
    chosen_state: list[Candidate] = Field(default_factory=list,
                                          description="the chosen GPUs' state at decision time")


class ModelUpdated(BusMessage):
    """On `aether.model.updated`: a new placement model version is in the registry; AI cores load it."""

    v: Literal[1] = 1
    version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    time: UtcDatetime
    metrics: dict[str, float | int | str | None] = Field(default_factory=dict)
    source: str | None = None
