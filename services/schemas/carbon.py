"""Carbon accounting over HTTP: GET /v1/carbon (energy and emissions per GPU, job, tenant or cluster) and
GET /v1/carbon/intensity (the intensity series and its cleanest window)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from services.schemas.base import BusMessage, UtcDatetime


class CarbonRow(BaseModel):
    key: str = Field(description="GPU uuid, job id, tenant, or 'cluster'")
    node: str | None = None
    energy_kwh: float
    co2_g: float
    covered_s: float = Field(description="time covered by samples (summed over GPUs): less than the range "
                                         "where telemetry is missing")


class CarbonPoint(BaseModel):
    time: UtcDatetime = Field(description="start of the bucket")
    energy_kwh: float
    co2_g: float


class IntensityInfo(BaseModel):
    source: str = Field(description="'constant' or the CSV file")
    region: str | None = None
    now_g_per_kwh: float
    mean_g_per_kwh: float = Field(description="time-weighted mean over the report's range")
    pue: float = 1.0


class CarbonReport(BusMessage):
    v: Literal[1] = 1
    by: Literal["gpu", "job", "tenant", "cluster"]
    start: UtcDatetime
    end: UtcDatetime
    source: Literal["raw", "rollup"] = Field(description="raw samples, or the 1-minute rollup for long ranges")
    intensity: IntensityInfo
    total_energy_kwh: float
    total_co2_g: float
    unattributed_energy_kwh: float | None = Field(
        None, description="by job/tenant: cluster energy no job accounts for (idle GPUs)")
    unattributed_co2_g: float | None = None
    rows: list[CarbonRow] = Field(default_factory=list)
    series: list[CarbonPoint] | None = None


class IntensityPoint(BaseModel):
    time: UtcDatetime
    g_per_kwh: float


class IntensityReport(BusMessage):
    v: Literal[1] = 1
    source: str
    region: str | None = None
    now: IntensityPoint
    cleanest: IntensityPoint = Field(description="lowest intensity within the range asked (earliest on ties)")
    points: list[IntensityPoint] = Field(default_factory=list, description="steps within the range")
