"""The job reports consumer against a real nats-server: a stream and consumer made by the previous version (which
also kept the orchestrators' own transitions) are brought to today's subjects with their acknowledgements kept, and
`caught_up_at` - the reconciler's condition for calling a job LOST - never passes a report that another client holds
unacknowledged (a leader that died holding a batch)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from orchestrator.jobs import reports as reports_mod
from orchestrator.jobs.reports import Reports
from services import subjects
from services.bus import JOBS_STREAM, JOBS_STREAM_SUBJECTS, ensure_jobs_stream
from tests.support.waiting import until

CONSUMER = "job-reports-test"
OLD_SUBJECTS = [subjects.JOB_STATE_ALL, subjects.JOB_REPORT_ALL, subjects.JOB_LOG_ALL]


def _reports(nc) -> Reports:
    settings = SimpleNamespace(job_reports_consumer=CONSUMER, job_reports_batch=64, job_stream_max_age_s=3600,
                               stream_replicas=1)
    return Reports(SimpleNamespace(settings=settings, nc=nc, js=nc.jetstream()), sched=None,
                   on_stray=lambda *a: None, on_hint=lambda hints: None, held=lambda: "TRUE")


async def test_an_older_stream_and_consumer_get_todays_subjects_and_keep_their_acknowledgements(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name=JOBS_STREAM, subjects=OLD_SUBJECTS))
        await js.add_consumer(JOBS_STREAM, ConsumerConfig(
            durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=10, max_deliver=-1, max_ack_pending=1000, filter_subjects=OLD_SUBJECTS))
        for i in range(3):
            await js.publish(subjects.job_report(f"j{i:016x}", "n1"), b"{}")
        psub = await js.pull_subscribe_bind(durable=CONSUMER, stream=JOBS_STREAM)
        for msg in await psub.fetch(2, timeout=5):
            await msg.ack_sync()
        await psub.unsubscribe()

        await ensure_jobs_stream(js)
        await _reports(nc)._ensure_consumer()

        assert (await js.stream_info(JOBS_STREAM)).config.subjects == JOBS_STREAM_SUBJECTS
        info = await js.consumer_info(JOBS_STREAM, CONSUMER)
        assert info.config.filter_subjects == JOBS_STREAM_SUBJECTS
        assert info.ack_floor.stream_seq == 2 and info.num_pending == 1  # the third report is still to come
        # An orchestrator's live transition is no longer kept; a hint is, and reaches the consumer.
        await nc.publish(subjects.job_state("j0000000000000009"), b"{}")
        await js.publish(subjects.scheduler_hint("j0000000000000009"), b"{}")
        assert (await js.consumer_info(JOBS_STREAM, CONSUMER)).num_pending == 2
    finally:
        await nc.close()


async def test_caught_up_never_passes_a_report_held_unacknowledged_elsewhere(nats_server, monkeypatch):
    monkeypatch.setattr(reports_mod, "CAUGHT_UP_EVERY_S", 0.01)
    monkeypatch.setattr(reports_mod, "IDLE_POLL_S", 0.05)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    reports = _reports(nc)
    tracker = None
    try:
        await ensure_jobs_stream(js)
        await reports._ensure_consumer()
        tracker = asyncio.create_task(reports._track_caught_up())
        # Nothing published: caught up at once.
        await until(lambda: reports.caught_up_at > 0, 5, "caught up on an empty stream")

        # Another client (a leader about to die) takes two reports and does not acknowledge them.
        for i in range(2):
            await js.publish(subjects.job_report(f"j{i:016x}", "n1"), b"{}")
        published = time.monotonic()
        held = await js.pull_subscribe_bind(durable=CONSUMER, stream=JOBS_STREAM)
        msgs = await held.fetch(2, timeout=5)
        assert len(msgs) == 2

        # Asked again and again while they are held: never caught up past their publication.
        asked = reports.checks
        await until(lambda: reports.checks >= asked + 10, 10, "ten more checks")
        assert reports.caught_up_at < published

        for msg in msgs:
            await msg.ack_sync()
        await until(lambda: reports.caught_up_at > published, 5, "caught up once they are acknowledged")
    finally:
        if tracker is not None:
            tracker.cancel()
            await asyncio.gather(tracker, return_exceptions=True)
        await nc.close()
