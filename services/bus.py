"""NATS and JetStream helpers shared by every service: connect with endless reconnects, idempotent streams,
typed decoding with dead-lettering of what does not parse."""

from __future__ import annotations

import logging
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from pydantic import BaseModel, ValidationError

from services import subjects
from services.errors import MalformedMessage
from services.fastdecode import FastDecoder

log = logging.getLogger("aether.bus")

M = TypeVar("M", bound=BaseModel)

MAX_MESSAGE_BYTES = 1024 * 1024


async def connect(url: str, *, name: str, user: str | None = None, password: str | None = None,
                  connect_timeout: float = 5.0) -> NATS:
    """Connect and keep reconnecting forever: a restarted nats-server must not need a restarted service."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    servers = [u.strip() for u in url.split(",") if u.strip()]
    return await nats.connect(
        servers=servers, name=name, user=user, password=password,
        connect_timeout=connect_timeout, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        allow_reconnect=True, error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )


async def ensure_stream(js: JetStreamContext, name: str, subject_list: list[str], *, max_age_s: float,
                        replicas: int = 1, max_bytes: int = -1, duplicate_window_s: float = 120.0) -> None:
    """Create the stream, or update it to this config; whoever starts first creates it."""
    cfg = StreamConfig(
        name=name, subjects=subject_list, retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
        max_age=max_age_s, max_bytes=max_bytes, num_replicas=replicas, discard=DiscardPolicy.OLD,
        duplicate_window=duplicate_window_s, max_msg_size=MAX_MESSAGE_BYTES,
    )
    try:
        await js.add_stream(cfg)
    except BadRequestError as exc:
        # 10058: a stream of that name exists with another config: bring it to ours.
        if getattr(exc, "err_code", None) == 10058:
            # Never shrink the replicas: a client with the default (an agent: replicas=1) must not undo the
            # redundancy the orchestrator set on a NATS cluster (stream_replicas=3). Scaling down is an operator's
            # explicit `nats stream edit`.
            try:
                current = (await js.stream_info(name)).config.num_replicas or 1
            except Exception:
                current = 1
            cfg.num_replicas = max(cfg.num_replicas or 1, current)
            await js.update_stream(cfg)
        else:
            raise


async def ensure_telemetry_stream(js: JetStreamContext, *, max_age_s: float = 24 * 3600, replicas: int = 1) -> None:
    await ensure_stream(js, subjects.TELEMETRY_STREAM, [subjects.TELEMETRY_ALL],
                        max_age_s=max_age_s, replicas=replicas)


JOBS_STREAM = "AETHER_JOBS"
JOBS_STREAM_SUBJECTS = [subjects.JOB_REPORT_ALL, subjects.JOB_LOG_ALL, subjects.SCHEDULER_HINT_ALL]


async def ensure_jobs_stream(js: JetStreamContext, *, max_age_s: float = 7 * 24 * 3600, replicas: int = 1) -> None:
    """Agents' job reports and output, and the scheduler's hints, are kept in a stream so that what is sent while the
    orchestrator (or the scheduler's leader) is down is not lost."""
    await ensure_stream(js, JOBS_STREAM, JOBS_STREAM_SUBJECTS, max_age_s=max_age_s, replicas=replicas)


def js_delivery(reply: str | None) -> tuple[int, int] | None:
    """(times delivered, stream sequence) of a JetStream message, read from its ack subject: a fraction of the cost
    of nats-py's full `Msg.metadata` parse, which the hot consumers would pay per message. None if not one."""
    tokens = reply.split(".") if reply else ()
    try:
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
            return int(tokens[4]), int(tokens[5])
        if len(tokens) >= 11:  # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>...
            return int(tokens[6]), int(tokens[7])
    except ValueError:
        pass
    return None


def decode(model: type[M], data: bytes, subject: str = "", fast: FastDecoder[M] | None = None) -> M:
    """Parse `data` as `model`, raising MalformedMessage (with the subject) on anything off-contract. `fast`, a
    compiled decoder of the same model, is for the hottest subjects: same result, a third of the CPU."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message on {subject} is {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        return fast.decode(data) if fast is not None else model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(message)"
        raise MalformedMessage(f"{model.__name__} on {subject}: {where}: {first['msg']}",
                               details={"subject": subject, "errors": exc.error_count()}) from exc


async def dead_letter(nc: NATS, kind: str, subject: str, data: bytes, reason: str) -> None:
    """Set a bad message aside on `aether.deadletter.<kind>` with why and where it came from."""
    headers = {"Aether-Original-Subject": subject, "Aether-Reason": reason[:512]}
    try:
        await nc.publish(f"{subjects.DEADLETTER_PREFIX}.{kind}", data[:MAX_MESSAGE_BYTES], headers=headers)
    except Exception as exc:  # the dead-letter path must never take the caller down
        log.error("dead-letter publish failed", extra={"subject": subject, "error": repr(exc)})
