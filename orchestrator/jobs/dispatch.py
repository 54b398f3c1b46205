"""Commands to a node's agent by NATS request/reply: run a job attempt, cancel a job. A missing or garbled reply
is an answer too (None, or a CommandReply with ok=False), never an exception."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from orchestrator.jobs.model import Job
from services import subjects
from services.bus import decode
from services.errors import MalformedMessage
from services.schemas import CancelCommand, CommandReply, DispatchCommand

log = logging.getLogger("aether.jobs.dispatch")


def run_command(job: Job) -> DispatchCommand:
    """The agent dedupes on (job id, attempt): sending the same command twice never runs the job twice."""
    return DispatchCommand(job_id=job.id, attempt=job.attempt, spec=job.spec, gpu_indices=job.gpu_indices,
                           gpu_uuids=job.gpu_uuids)


async def _request(nc: NATS, subject: str, data: bytes, timeout_s: float) -> tuple[CommandReply | None, str]:
    try:
        msg = await nc.request(subject, data, timeout=timeout_s)
    except NoRespondersError:
        return None, "no_responders"
    except (NatsTimeout, TimeoutError):
        return None, "timeout"
    except Exception as exc:  # disconnected, draining: the caller treats it like silence
        return None, f"error:{exc.__class__.__name__}"
    try:
        return decode(CommandReply, msg.data, subject), "ok"
    except MalformedMessage as exc:
        log.warning("malformed command reply", extra={"subject": subject, "error": exc.message})
        return CommandReply(ok=False, code="MALFORMED_MESSAGE", message=exc.message), "malformed"


async def send_run(nc: NATS, job: Job, timeout_s: float) -> tuple[CommandReply | None, str]:
    return await _request(nc, subjects.cmd(job.node, "run"), run_command(job).to_bytes(), timeout_s)


async def send_cancel(nc: NATS, node: str, job_id: str, reason: str, timeout_s: float = 3.0
                      ) -> tuple[CommandReply | None, str]:
    return await _request(nc, subjects.cmd(node, "cancel"), CancelCommand(job_id=job_id, reason=reason).to_bytes(),
                          timeout_s)
