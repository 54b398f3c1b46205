"""`GET /v1/gpus/{uuid}/telemetry?from=&to=&bucket=&fields=`: one GPU's stored samples, raw or bucketed
(avg/min/max). Buckets that are whole minutes come from the 1-minute rollup (TimescaleDB's continuous aggregate
with real-time aggregation; on plain PostgreSQL the rollup table up to its watermark plus raw samples after it);
other buckets are computed from raw samples with date_bin."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from orchestrator import throttle
from orchestrator.auth import Principal, require
from orchestrator.errors import GpuNotFound, InvalidRequest
from orchestrator.partitions import ORIGIN, rollup_watermark
from services.schemas.telemetry_series import BUCKETED_METRICS, RAW_FIELDS, TelemetrySeries

router = APIRouter()

DEFAULT_RANGE = timedelta(hours=1)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# real columns come back through their text form so 61.2 reads 61.2, not 61.20000076293945
_REAL = {"util_gpu_pct", "util_mem_pct", "mem_used_mb", "mem_total_mb", "temp_c", "mem_temp_c", "power_w",
         "power_limit_w", "sm_clock_mhz", "mem_clock_mhz", "gfx_clock_mhz", "fan_pct", "pcie_tx_kbps",
         "pcie_rx_kbps", "bar1_used_mb", "bar1_total_mb"}


def parse_time(value: str | None, name: str) -> datetime | None:
    """ISO-8601 with a zone (`2026-01-01T00:00:00Z`) or Unix seconds."""
    if value is None or value == "":
        return None
    try:
        t = datetime.fromtimestamp(float(value), UTC)
    except (OverflowError, OSError):
        raise InvalidRequest(f"{name}: out of range: {value!r}", field=name) from None
    except ValueError:
        try:
            t = datetime.fromisoformat(value.strip().replace(" ", "+"))  # a '+' in a URL may arrive as ' '
        except ValueError:
            raise InvalidRequest(f"{name}: not an ISO-8601 time or Unix seconds: {value!r}", field=name) from None
    if t.tzinfo is None:
        raise InvalidRequest(f"{name}: give a timezone (e.g. {value}Z)", field=name)
    return t.astimezone(UTC)


def parse_bucket(value: str | None) -> float | None:
    """`30s`, `1m`, `5m`, `1h`, `1d`, or seconds (`60`); at least one second."""
    if value is None or value.strip() == "" or value.strip().lower() == "raw":
        return None
    m = _DURATION.match(value.lower())
    if not m:
        raise InvalidRequest(f"bucket: expected a duration like 30s, 5m, 1h or seconds, got {value!r}",
                             field="bucket")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds < 1:
        raise InvalidRequest("bucket: at least 1s", field="bucket")
    return seconds


def parse_fields(value: str | None, bucketed: bool) -> list[str]:
    allowed = BUCKETED_METRICS if bucketed else RAW_FIELDS
    if not value:
        return list(allowed) if bucketed else [f for f in RAW_FIELDS if f != "processes"]
    out = []
    for f in (x.strip() for x in value.split(",")):
        if f and f not in allowed:
            raise InvalidRequest(f"fields: {f!r} is not one of {', '.join(allowed)}", field="fields")
        if f and f not in out:
            out.append(f)
    return out


def _raw_column(f: str) -> str:
    if f in _REAL:
        return f"{f}::text::float8 AS {f}"
    if f == "throttle_reasons":
        return "throttle_mask AS throttle_reasons"
    if f == "xid_errors":
        return "coalesce(xid_errors, '{}') AS xid_errors"
    return f


def raw_sql(fields: list[str]) -> str:
    cols = ", ".join(map(_raw_column, fields))
    return (f"SELECT time{', ' if cols else ''}{cols} FROM gpu_samples WHERE gpu_uuid = $1 AND time >= $2 "
            "AND time < $3 ORDER BY time LIMIT $4")


def bucketed_raw_sql(fields: list[str]) -> str:
    aggs = "".join(f", round(avg({f})::numeric, 3)::float8 AS {f}_avg, min({f})::text::float8 AS {f}_min, "
                   f"max({f})::text::float8 AS {f}_max" for f in fields)
    return (f"SELECT date_bin($4::interval, time, $5::timestamptz) AS t, count(*) AS n{aggs} FROM gpu_samples "
            "WHERE gpu_uuid = $1 AND time >= $2 AND time < $3 GROUP BY t ORDER BY t")


def rollup_sql(fields: list[str]) -> str:
    """Minutes from the rollup before $6, raw samples from $6 on (plain PostgreSQL's not-yet-rolled-up tail; with
    TimescaleDB $6 = `to` and its real-time aggregate covers the tail), combined per bucket. Averages are
    weighted by each minute's sample count."""
    inner_r = "".join(f", {f}_avg * n AS {f}_sum, CASE WHEN {f}_avg IS NULL THEN 0 ELSE n END AS {f}_cnt, "
                      f"{f}_min, {f}_max" for f in fields)
    inner_s = "".join(f", {f}::float8, CASE WHEN {f} IS NULL THEN 0 ELSE 1 END, {f}, {f}" for f in fields)
    outer = "".join(f", round((sum({f}_sum) / nullif(sum({f}_cnt), 0))::numeric, 3)::float8 AS {f}_avg, "
                    f"min({f}_min)::text::float8 AS {f}_min, max({f}_max)::text::float8 AS {f}_max" for f in fields)
    return (f"WITH parts AS ("
            f"SELECT date_bin($4::interval, bucket, $5::timestamptz) AS t, n{inner_r} FROM gpu_samples_1m "
            f"WHERE gpu_uuid = $1 AND bucket >= $2::timestamptz AND bucket < least($3::timestamptz, $6::timestamptz) "
            f"UNION ALL "
            f"SELECT date_bin($4::interval, time, $5::timestamptz), 1{inner_s} FROM gpu_samples "
            f"WHERE gpu_uuid = $1 AND time >= greatest($2::timestamptz, $6::timestamptz) AND time < $3) "
            f"SELECT t, sum(n)::bigint AS n{outer} FROM parts GROUP BY t ORDER BY t")


async def _gpu_known(rt, conn, uuid: str) -> bool:
    if uuid in rt.cluster.gpus:
        return True
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM gpus WHERE uuid = $1) OR "
                                    "EXISTS (SELECT 1 FROM gpu_samples_1m WHERE gpu_uuid = $1)", uuid))


@router.get("/v1/gpus/{uuid}/telemetry", response_model=TelemetrySeries, response_model_by_alias=True)
async def gpu_telemetry(
    uuid: str,
    request: Request,
    from_: str | None = Query(None, alias="from", description="ISO-8601 with zone, or Unix seconds; default to-1h"),
    to: str | None = Query(None, description="ISO-8601 with zone, or Unix seconds; default now (exclusive)"),
    bucket: str | None = Query(None, description="e.g. 30s, 1m, 5m, 1h; absent or 'raw' for raw samples"),
    fields: str | None = Query(None, description="comma-separated subset of the metrics"),
    _: Principal = Depends(require("viewer")),
) -> Response:
    rt = request.app.state.rt
    end = parse_time(to, "to") or datetime.now(UTC)
    start = parse_time(from_, "from") or end - DEFAULT_RANGE
    if start >= end:
        raise InvalidRequest("from must be before to", field="from")
    bucket_s = parse_bucket(bucket)
    wanted = parse_fields(fields, bucket_s is not None)
    limit = rt.settings.telemetry_max_points
    body: dict = {"v": 1, "gpu_uuid": uuid, "from": start, "to": end, "bucket_s": bucket_s, "storage": rt.storage,
                  "fields": wanted, "truncated": False, "next_from": None}
    async with rt.db() as conn:
        if not await _gpu_known(rt, conn, uuid):
            raise GpuNotFound(f"no GPU {uuid!r}")
        if bucket_s is None:
            rows = await conn.fetch(raw_sql(wanted), uuid, start, end, limit + 1)
            if len(rows) > limit:
                rows = rows[:limit]
                body["truncated"] = True
                body["next_from"] = rows[-1]["time"] + timedelta(microseconds=1)
            body["source"] = "raw"
            points = [dict(r) for r in rows]
            if "throttle_reasons" in wanted:
                for p in points:
                    p["throttle_reasons"] = throttle.names(p["throttle_reasons"])
            if "processes" in wanted:
                for p in points:
                    if p["processes"] is not None:
                        p["processes"] = orjson.loads(p["processes"])
        else:
            n_buckets = math.ceil((end - start).total_seconds() / bucket_s)
            if n_buckets > limit:
                raise InvalidRequest(f"bucket: {bucket} over this range makes {n_buckets} points; the limit is "
                                     f"{limit}: use a larger bucket or a shorter range", field="bucket")
            width = timedelta(seconds=bucket_s)
            if bucket_s % 60 == 0:
                # The rollup holds whole minutes: widen the start to its minute so the first one is whole.
                start_m = start.replace(second=0, microsecond=0)
                tail = end if rt.storage == "timescaledb" else (await rollup_watermark(conn) or start_m)
                rows = await conn.fetch(rollup_sql(wanted), uuid, start_m, end, width, ORIGIN, tail)
                body["source"] = "rollup"
            else:
                rows = await conn.fetch(bucketed_raw_sql(wanted), uuid, start, end, width, ORIGIN)
                body["source"] = "raw_bucketed"
            points = [{"time": r["t"], **{k: v for k, v in r.items() if k != "t"}} for r in rows]
    body["points"] = points
    return Response(orjson.dumps(body), media_type="application/json")
