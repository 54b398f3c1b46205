"""Carbon settings (YAML `orchestrator.carbon`): the intensity source, integration limits, deferral policy."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.errors import ConfigError


class CarbonSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intensity_g_per_kwh: float = Field(
        400.0, ge=0, le=5000, description="constant grid carbon intensity (gCO2e/kWh), used without a CSV")
    intensity_csv: Path | None = Field(
        None, description="CSV of `time,intensity` (ISO-8601 with zone, or Unix seconds; gCO2e/kWh): each value "
                          "holds until the next row; rows in the future are a forecast used for deferral")
    region: str | None = Field(None, max_length=64, description="label of the grid region, for reports")
    reload_interval_s: float = Field(60.0, gt=0, le=86400, description="how often the CSV is checked for changes")
    pue: float = Field(1.0, ge=1.0, le=5.0, description="power usage effectiveness applied to emissions")
    max_gap_s: float = Field(
        60.0, gt=0, le=3600, description="samples further apart than this are not integrated across (unknown)")
    raw_max_samples: int = Field(
        2_000_000, ge=1000,
        description="reports expected to read more raw samples than this (GPUs x seconds) use the 1-minute rollup")
    max_range_days: float = Field(400.0, gt=0, le=3660)
    query_timeout_s: float = Field(30.0, gt=0, le=600)
    defer_enabled: bool = True
    defer_min_saving_pct: float = Field(
        10.0, ge=0, le=100, description="defer only for a window at least this much cleaner than now")
    defer_default_window_s: float = Field(
        12 * 3600.0, ge=0, le=30 * 86400, description="how long a deferrable job without a deadline may wait")

    @field_validator("intensity_csv")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        # Checked at start-up so a bad file stops the service naming the line, instead of zero emissions.
        if v is not None:
            from orchestrator.carbon.intensity import load_csv

            try:
                load_csv(v)
            except ConfigError as exc:
                raise ValueError(exc.message) from exc
        return v
