"""SQL for the `alerts` table: insert an opened alert (adopting one already open for the key), resolve,
acknowledge, list with filters, and load the open ones at start-up."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from orchestrator.alerts.hysteresis import AlertRecord
from services.schemas.alerts import AlertSeverity, AlertState

COLUMNS = ("id, rule, severity, state, node, gpu_uuid, metric, value, threshold, message, opened_at, resolved_at, "
           "acknowledged_at, acknowledged_by")

INSERT = f"""
INSERT INTO alerts (key, rule, severity, state, node, gpu_uuid, metric, value, threshold, message, opened_at)
VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (key) WHERE state = 'open' DO NOTHING
RETURNING {COLUMNS}
"""


def record(row: asyncpg.Record) -> AlertRecord:
    return AlertRecord(rule=row["rule"], severity=AlertSeverity(row["severity"]), node=row["node"],
                       gpu_uuid=row["gpu_uuid"], metric=row["metric"], value=row["value"], threshold=row["threshold"],
                       message=row["message"], opened_at=row["opened_at"], id=row["id"],
                       state=AlertState(row["state"]), resolved_at=row["resolved_at"],
                       acknowledged_at=row["acknowledged_at"], acknowledged_by=row["acknowledged_by"])


async def insert_open(conn: asyncpg.Connection, rec: AlertRecord) -> tuple[int, bool]:
    """Store an opened alert; returns (id, True), or the id of the alert already open for the key and False
    (another replica, or a run before a crash, opened it first)."""
    row = await conn.fetchrow(INSERT, rec.key, rec.rule, rec.severity.value, rec.node, rec.gpu_uuid, rec.metric,
                              rec.value, rec.threshold, rec.message, rec.opened_at)
    if row is not None:
        return row["id"], True
    existing = await conn.fetchval("SELECT id FROM alerts WHERE key = $1 AND state = 'open'", rec.key)
    if existing is None:  # resolved between the two statements: try once more
        row = await conn.fetchrow(INSERT, rec.key, rec.rule, rec.severity.value, rec.node, rec.gpu_uuid,
                                  rec.metric, rec.value, rec.threshold, rec.message, rec.opened_at)
        return row["id"], True
    return existing, False


async def resolve(conn: asyncpg.Connection, alert_id: int, resolved_at: datetime) -> None:
    await conn.execute("UPDATE alerts SET state = 'resolved', resolved_at = $2 WHERE id = $1 AND state = 'open'",
                       alert_id, resolved_at)


async def acknowledge(conn: asyncpg.Connection, alert_id: int, by: str, at: datetime) -> AlertRecord | None:
    """Acknowledge once: a second ack keeps the first one's time and author."""
    row = await conn.fetchrow(
        f"UPDATE alerts SET acknowledged_at = coalesce(acknowledged_at, $2), "
        f"acknowledged_by = coalesce(acknowledged_by, $3) WHERE id = $1 RETURNING {COLUMNS}", alert_id, at, by)
    return record(row) if row is not None else None


async def get(conn: asyncpg.Connection, alert_id: int) -> AlertRecord | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM alerts WHERE id = $1", alert_id)
    return record(row) if row is not None else None


async def load_open(conn: asyncpg.Connection) -> list[AlertRecord]:
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM alerts WHERE state = 'open' ORDER BY id")
    return [record(r) for r in rows]


async def query(conn: asyncpg.Connection, *, state: str | None = None, severity: str | None = None,
                node: str | None = None, gpu_uuid: str | None = None, rule: str | None = None,
                since: datetime | None = None, until: datetime | None = None, limit: int = 200,
                before_id: int | None = None) -> list[AlertRecord]:
    """Newest first (by id: the order alerts were stored). Filters are bound parameters, never SQL text."""
    where, args = [], []
    for column, value in (("state", state), ("severity", severity), ("node", node), ("gpu_uuid", gpu_uuid),
                          ("rule", rule)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if since is not None:
        args.append(since)
        where.append(f"coalesce(resolved_at, 'infinity') >= ${len(args)}")
    if until is not None:
        args.append(until)
        where.append(f"opened_at < ${len(args)}")
    if before_id is not None:
        args.append(before_id)
        where.append(f"id < ${len(args)}")
    args.append(limit)
    sql = (f"SELECT {COLUMNS} FROM alerts {'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY id DESC LIMIT ${len(args)}")
    return [record(r) for r in await conn.fetch(sql, *args)]
