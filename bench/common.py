"""Helpers shared by the benchmarks: percentiles, a printed table, the JSON result file and an SVG bar chart."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

# Benchmarks run as `python bench/NAME.py` from the repository root: make the project importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """{'p50': ..., 'p95': ..., 'p99': ...} of `values`."""
    return {f"p{q:g}": percentile(values, q) for q in qs}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None,
                file=None) -> None:
    """Print rows (dicts) as an aligned text table."""
    out = file or sys.stdout
    if not rows:
        print("(no rows)", file=out)
        return
    cols = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    if title:
        print(title, file=out)
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)), file=out)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write one JSON object (NaN/inf become null), creating the folder; atomic via a temporary file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(clean(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, p)
    return p


_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")


def svg_bar_chart(path: str | os.PathLike, title: str, categories: Sequence[str],
                  series: dict[str, Sequence[float]], unit: str = "", width: int = 760, height: int = 360) -> Path:
    """A grouped bar chart as a standalone SVG: one group per category, one bar per series."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    names = list(series)
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    vmax = max(values, default=1.0) or 1.0
    left, right, top, bottom = 70, 20, 40, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    group_w = plot_w / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(names))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i in range(5):  # horizontal grid with values
        v = vmax * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:,.0f}{escape(unit)}</text>')
    for ci, cat in enumerate(categories):
        x0 = left + ci * group_w + group_w * 0.1
        for si, name in enumerate(names):
            v = series[name][ci]
            if v is None or not math.isfinite(v):
                continue
            h = plot_h * v / vmax
            x = x0 + si * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                         f'fill="{_PALETTE[si % len(_PALETTE)]}"><title>{escape(name)} {escape(cat)}: '
                         f'{v:,.2f}{escape(unit)}</title></rect>')
        parts.append(f'<text x="{left + ci * group_w + group_w / 2:.1f}" y="{top + plot_h + 16}" '
                     f'text-anchor="middle">{escape(cat)}</text>')
    for si, name in enumerate(names):  # legend under the axis
        x = left + si * 130
        y = height - 20
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{_PALETTE[si % len(_PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="{y}">{escape(name)}</text>')
    parts.append("</svg>")
    p.write_text("\n".join(parts) + "\n")
    return p


def cpu_s(pid: int, tree: bool = False) -> float:
    """CPU seconds of a process (and, with `tree`, of its children: PostgreSQL's backends, those still running and
    those that exited and were reaped, so the figure never goes down when a backend ends)."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)] if tree else [p]
        root = p.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    total = root.children_user + root.children_system if tree else 0.0
    for q in procs:
        try:
            c = q.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total
