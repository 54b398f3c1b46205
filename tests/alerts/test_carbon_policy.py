"""Carbon intensity from a constant or a CSV, and carbon-aware deferral of deferrable jobs up to their deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.carbon.config import CarbonSettings
from orchestrator.carbon.intensity import IntensitySeries, parse_csv
from orchestrator.carbon.service import CarbonService
from services.errors import ConfigError
from services.schemas import JobSpec

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def forecast_csv(path: Path) -> Path:
    """Dirty now (450), a clean window from 14:00 (120), then middling (300) from 16:00."""
    path.write_text("time,intensity\n"
                    "# region: test grid\n"
                    f"{(NOW - timedelta(hours=2)).isoformat()},450\n"
                    f"{int((NOW + timedelta(hours=2)).timestamp())},120\n"
                    f"{(NOW + timedelta(hours=4)).isoformat().replace('+00:00', 'Z')},300\n")
    return path


def test_csv_steps_hold_until_the_next_row(tmp_path):
    s = CarbonService(CarbonSettings(intensity_csv=forecast_csv(tmp_path / "grid.csv"))).series
    assert s.at((NOW - timedelta(days=1)).timestamp()) == 450  # before the first row: the first value
    assert s.at(NOW.timestamp()) == 450
    assert s.at((NOW + timedelta(hours=3)).timestamp()) == 120
    assert s.at((NOW + timedelta(days=9)).timestamp()) == 300  # the last row holds on
    assert s.cleanest(NOW.timestamp(), (NOW + timedelta(hours=8)).timestamp()) == \
        ((NOW + timedelta(hours=2)).timestamp(), 120)
    assert s.mean(NOW.timestamp(), (NOW + timedelta(hours=4)).timestamp()) == pytest.approx((450 + 120) / 2)


@pytest.mark.parametrize(("text", "needle"), [
    ("2026-01-01T00:00:00Z,100\n2026-01-01T00:00:00Z,200\n", "two rows"),
    ("2026-01-01T00:00:00,100\n", "timezone"),
    ("2026-01-01T00:00:00Z,-5\n", "0-5000"),
    ("time,intensity\n", "no intensity rows"),
    ("2026-01-01T00:00:00Z,100\nnot-a-time,3\n", ":2:"),
])
def test_a_bad_csv_is_refused_naming_the_problem(text, needle):
    with pytest.raises(ConfigError) as exc:
        parse_csv(text, "grid.csv")
    assert needle in exc.value.message


def test_a_missing_csv_stops_the_settings(tmp_path):
    with pytest.raises(ValidationError) as exc:
        CarbonSettings(intensity_csv=tmp_path / "absent.csv")
    assert "absent.csv" in str(exc.value)


def _job(**kw) -> JobSpec:
    return JobSpec(name="train", command=["python", "x.py"], max_duration_s=3600, **kw)


async def test_deferrable_job_waits_for_the_clean_window_before_its_deadline(tmp_path):
    svc = CarbonService(CarbonSettings(intensity_csv=forecast_csv(tmp_path / "grid.csv")))
    d = await svc.decision(_job(deferrable=True, deadline=NOW + timedelta(hours=8)), now=NOW)
    assert d.start is False
    assert d.wait_until == NOW + timedelta(hours=2) and d.best_intensity == 120 and d.intensity_now == 450
    assert d.latest_start == NOW + timedelta(hours=7)
    # In the clean window it goes.
    assert await svc.may_start_now(_job(deferrable=True, deadline=NOW + timedelta(hours=8)),
                                   now=NOW + timedelta(hours=2, minutes=5))


async def test_deferral_never_misses_the_deadline_and_ignores_other_jobs(tmp_path):
    svc = CarbonService(CarbonSettings(intensity_csv=forecast_csv(tmp_path / "grid.csv")))
    # The clean window opens after the latest start (deadline 14:30 - 1 h run): start now.
    tight = await svc.decision(_job(deferrable=True, deadline=NOW + timedelta(hours=2, minutes=30)), now=NOW)
    assert tight.start is True and "within" in tight.reason
    late = await svc.decision(_job(deferrable=True, deadline=NOW + timedelta(minutes=30)), now=NOW)
    assert late.start is True and "deadline" in late.reason
    assert await svc.may_start_now(_job(), now=NOW)  # not deferrable
    # No deadline: the default window from submission bounds the wait.
    job = {"spec": _job(deferrable=True), "max_duration_s": 3600, "submitted_at": NOW - timedelta(hours=11)}
    assert (await svc.decision(job, now=NOW)).start is True  # 12 h window ends at 13:00, before the clean one
    job["submitted_at"] = NOW
    assert (await svc.decision(job, now=NOW)).start is False


async def test_small_savings_or_a_constant_intensity_never_defer():
    svc = CarbonService(CarbonSettings(intensity_g_per_kwh=250))
    assert await svc.may_start_now(_job(deferrable=True, deadline=NOW + timedelta(days=1)), now=NOW)
    svc.series = IntensitySeries((0.0, (NOW + timedelta(hours=1)).timestamp()), (400.0, 380.0), "x")
    d = await svc.decision(_job(deferrable=True, deadline=NOW + timedelta(days=1)), now=NOW)
    assert d.start is True  # 5 % cleaner is under the 10 % that makes waiting worth it
    svc.s = CarbonSettings(defer_enabled=False)
    svc.series = IntensitySeries((0.0, (NOW + timedelta(hours=1)).timestamp()), (400.0, 40.0), "x")
    assert await svc.may_start_now(_job(deferrable=True, deadline=NOW + timedelta(days=1)), now=NOW)
