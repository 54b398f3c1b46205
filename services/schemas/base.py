"""Base classes of the contract: bus messages tolerate nothing unknown in `v`, HTTP bodies refuse unknown fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

SCHEMA_VERSION = 1


def _aware_utc(value: datetime) -> datetime:
    # Naive timestamps are ambiguous across nodes in different zones: refuse them.
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (UTC ISO-8601, e.g. 2026-01-01T00:00:00Z)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class BusMessage(BaseModel):
    """A NATS message. Unknown fields are ignored so newer publishers can add fields within one `v`."""

    model_config = ConfigDict(extra="ignore", frozen=False)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()


class StrictBody(BaseModel):
    """An HTTP request body: unknown fields are refused, naming the field."""

    model_config = ConfigDict(extra="forbid")
