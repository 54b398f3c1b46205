"""Carbon intensity as a step function of time: a constant, or a CSV of `time,intensity` rows where each value
holds until the next row (the last one holds on). Future rows act as a forecast for deferral."""

from __future__ import annotations

import csv
import io
import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.errors import ConfigError

MAX_ROWS = 2_000_000


@dataclass(frozen=True)
class IntensitySeries:
    times: tuple[float, ...]  # Unix seconds, strictly ascending
    values: tuple[float, ...]  # gCO2e/kWh
    source: str  # "constant" or the CSV path

    @classmethod
    def constant(cls, g_per_kwh: float) -> IntensitySeries:
        return cls((0.0,), (float(g_per_kwh),), "constant")

    def index(self, t: float) -> int:
        # Before the first row the first value holds: a CSV that starts late must not leave a hole.
        return max(0, bisect_right(self.times, t) - 1)

    def at(self, t: float) -> float:
        return self.values[self.index(t)]

    def window(self, start: float, end: float) -> tuple[list[float], list[float]]:
        """The steps covering [start, end]: their start times (the first clamped to `start`) and values."""
        i, j = self.index(start), self.index(end)
        times = [start, *self.times[i + 1:j + 1]]
        return times, list(self.values[i:j + 1])

    def cleanest(self, start: float, end: float) -> tuple[float, float]:
        """(time, value) of the lowest intensity in [start, end]; the earliest such time when there are ties."""
        times, values = self.window(start, end)
        best = min(range(len(values)), key=lambda k: (values[k], times[k]))
        return times[best], values[best]

    def sql_arrays(self, start: float, end: float) -> tuple[list[float], list[float]]:
        """Step starts (Unix seconds) and values for SQL `width_bucket`; the first start is pushed far into the
        past so every time maps to a step."""
        times, values = self.window(start, end)
        return [-1e18, *times[1:]], values

    def mean(self, start: float, end: float) -> float:
        """Time-weighted mean over [start, end]."""
        if end <= start:
            return self.at(start)
        times, values = self.window(start, end)
        edges = [*times, end]
        total = sum(v * (edges[k + 1] - edges[k]) for k, v in enumerate(values))
        return total / (end - start)


def _parse_time(text: str) -> float:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"time {text!r} is not finite")
        return value
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone (write e.g. 2026-01-01T00:00:00Z)")
    return dt.timestamp()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_csv(text: str, source: str) -> IntensitySeries:
    """Rows of `time,intensity`; an optional header line; blank lines and `#` comments ignored."""
    rows: list[tuple[float, float]] = []
    header_seen = False
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise ConfigError(f"{source}:{lineno}: expected `time,intensity`, got {','.join(row)!r}")
        first, header_seen = not header_seen, True
        if first and not _is_number(row[1]):
            continue  # a header (`time,intensity`)
        try:
            t = _parse_time(row[0])
            v = float(row[1])
        except ValueError as exc:
            raise ConfigError(f"{source}:{lineno}: {exc}") from exc
        if not math.isfinite(v) or v < 0 or v > 5000:
            raise ConfigError(f"{source}:{lineno}: intensity {row[1]!r} is not within 0-5000 gCO2e/kWh")
        rows.append((t, v))
        if len(rows) > MAX_ROWS:
            raise ConfigError(f"{source}: more than {MAX_ROWS} rows")
    if not rows:
        raise ConfigError(f"{source}: no intensity rows")
    rows.sort()
    for (t1, _), (t2, _) in zip(rows, rows[1:], strict=False):
        if t1 == t2:
            raise ConfigError(f"{source}: two rows for time {datetime.fromtimestamp(t1, UTC).isoformat()}")
    return IntensitySeries(tuple(t for t, _ in rows), tuple(v for _, v in rows), source)


def load_csv(path: Path) -> IntensitySeries:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"carbon intensity CSV {path}: {exc}") from exc
    return parse_csv(text, str(path))
