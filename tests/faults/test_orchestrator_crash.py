"""The orchestrator is killed with SIGKILL while ingest works through a backlog and a burst of job submissions is
in flight, then started again: every published sample is stored exactly once, every submission (retried with its
Idempotency-Key when its answer was lost) is one job, and every job reaches a final state exactly once, run once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta

import httpx
import nats
import pytest

from services import subjects
from services.bus import ensure_telemetry_stream
from services.schemas import TelemetryBatch, TelemetrySample
from tests.faults.support import (
    agent,
    ametric,
    fetch,
    headers,
    node_name,
    start_orchestrator,
    stored_samples,
    telemetry_in_stream,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BACKLOG = 5000  # telemetry batches waiting in the stream when the orchestrator starts
BACKLOG_GPUS = 4
JOBS = 40
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
# Small transactions and one writer: the backlog takes seconds to store, so the kill lands in the middle of it.
INGEST = {"INGEST_ACK_WAIT_S": "3", "INGEST_WRITE_MAX_MSGS": "10", "INGEST_WRITERS": "1"}


def _backlog(node: str) -> list[TelemetryBatch]:
    t0 = datetime.now(UTC) - timedelta(seconds=50)
    out = []
    for k in range(BACKLOG):
        t = t0 + timedelta(milliseconds=5 * k)
        out.append(TelemetryBatch(node=node, seq=k, time=t, interval_s=0.005, samples=[
            TelemetrySample(time=t, node=node, gpu_index=i, gpu_uuid=f"GPU-{node}-{i}", name="NVIDIA H100 80GB HBM3",
                            util_gpu_pct=float(k % 100), mem_total_mb=81559.0) for i in range(BACKLOG_GPUS)]))
    return out


async def _publish(nats_url: str, batches: list[TelemetryBatch]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_telemetry_stream(js)
        acks = [await js.publish_async(subjects.telemetry(b.node), b.to_bytes(), headers={"Nats-Msg-Id": b.msg_id()})
                for b in batches]
        await asyncio.gather(*acks)
    finally:
        await nc.close()


async def test_sigkill_during_ingest_and_a_submission_burst(nats_server, database_url, output_dir):
    first = await asyncio.to_thread(start_orchestrator, nats_server.url, database_url,
                                    output_dir / "orchestrator-1.log", **INGEST)
    agents = [agent(nats_server.url, node_name("crash"), output_dir, gpus=2) for _ in range(2)]
    await asyncio.gather(*(asyncio.to_thread(a.start) for a in agents))
    second = None
    synthetic = node_name("backlog")
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as c:
            async def placeable():
                gpus = (await c.get("/v1/gpus", headers=headers())).json()
                return sum(1 for g in gpus if g["healthy"] and g["node"] != synthetic) == 4

            await until(placeable, 30, "both agents' GPUs placeable")

        await _publish(nats_server.url, _backlog(synthetic))
        answers: dict[str, dict] = {}  # idempotency key -> first answer (job id) or the error
        body = {"command": ["sleep", "1"], "gpu_mem_mb": 512}

        async def submit(client: httpx.AsyncClient, key: str) -> None:
            try:
                r = await client.post("/v1/jobs", json={"name": key, **body},
                                      headers={**headers(), "Idempotency-Key": key})
                answers[key] = {"status": r.status_code, **r.json()}
            except httpx.HTTPError as exc:
                answers[key] = {"status": None, "error": repr(exc)}

        keys = [f"burst-{i:03d}" for i in range(JOBS)]
        async with httpx.AsyncClient(base_url=first.url, timeout=30,
                                     limits=httpx.Limits(max_connections=4)) as c:
            burst = [asyncio.create_task(submit(c, k)) for k in keys]
            accepted = lambda: sum(1 for a in answers.values() if a["status"] == 201)  # noqa: E731
            await until(lambda: accepted() >= JOBS // 4, 30, "a quarter of the burst accepted", interval=0.01)
            await asyncio.to_thread(first.kill)  # SIGKILL: no drain, no acks, requests cut off mid-flight
            await asyncio.gather(*burst)
        rows_at_kill, _ = await stored_samples(database_url, synthetic)
        accepted_before = {k: a["job_id"] for k, a in answers.items() if a["status"] == 201}
        lost_answers = [k for k, a in answers.items() if a["status"] != 201]
        assert 0 < rows_at_kill < BACKLOG * BACKLOG_GPUS, "the kill should land in the middle of the backlog"
        assert lost_answers, "the kill should cut some submissions off"

        second = await asyncio.to_thread(start_orchestrator, nats_server.url, database_url,
                                         output_dir / "orchestrator-2.log", port=first.port, **INGEST)
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as c:
            # The client retries what got no answer, with the same key; then every key once more.
            ids: dict[str, str] = dict(accepted_before)
            stored_unanswered = 0  # submissions committed before the kill whose answer never arrived
            for key in lost_answers:
                async def retry(key=key):
                    nonlocal stored_unanswered
                    r = await c.post("/v1/jobs", json={"name": key, **body}, headers={**headers(), "Idempotency-Key": key})
                    if r.status_code in (200, 201):
                        stored_unanswered += r.status_code == 200
                        return r.json()["job_id"]
                    assert r.status_code == 503, r.text  # only "not ready yet" is acceptable here
                    return None

                ids[key] = await until(retry, 30, f"{key} accepted after the restart")
            again = await asyncio.gather(*(c.post("/v1/jobs", json={"name": k, **body},
                                                  headers={**headers(), "Idempotency-Key": k}) for k in keys))
            assert [r.status_code for r in again] == [200] * JOBS  # all known: none created twice
            assert {k: r.json()["job_id"] for k, r in zip(keys, again, strict=True)} == ids
            assert len(set(ids.values())) == JOBS

            async def all_final():
                rows = await fetch(database_url, "SELECT id, state FROM jobs WHERE id = ANY($1::text[])",
                                   list(ids.values()))
                return rows if len(rows) == JOBS and all(r["state"] in FINAL for r in rows) else None

            rows = await until(all_final, 90, f"all {JOBS} jobs final", interval=0.25)
        assert {r["state"] for r in rows} == {"SUCCEEDED"}
        events = await fetch(database_url, "SELECT job_id, to_state FROM job_events WHERE job_id = ANY($1::text[])",
                             list(ids.values()))
        finals = [e["job_id"] for e in events if e["to_state"] in FINAL]
        assert sorted(finals) == sorted(ids.values()), "each job reaches exactly one final state"
        runs = sum([await ametric(a.url, "aether_agent_jobs_finished_total") for a in agents])
        assert runs == JOBS, f"the agents ran {runs} job attempts for {JOBS} jobs"

        # Telemetry: stop the agents (they flush their buffers), then every message in the stream is in the
        # database exactly once: the backlog and both agents' live samples across the kill.
        await asyncio.gather(*(asyncio.to_thread(a.stop) for a in agents))
        counts = {}
        for node in [synthetic, *(a.args[a.args.index("--node") + 1] for a in agents)]:
            in_stream = await telemetry_in_stream(nats_server.url, node)
            expected = sum(m["samples"] for m in in_stream)
            await until(lambda node=node, expected=expected: _rows_are(database_url, node, expected), 60,
                        f"{expected} samples of {node} stored")
            rows_, distinct = await stored_samples(database_url, node)
            assert rows_ == distinct == expected, node
            counts[node] = expected
        assert counts[synthetic] == BACKLOG * BACKLOG_GPUS
        assert await ametric(second.url, "aether_ingest_redelivered_messages_total") > 0  # it did take over
        (output_dir / "crash.json").write_text(json.dumps({
            "rows_at_kill": rows_at_kill, "samples": counts, "accepted_before_kill": len(accepted_before),
            "answers_lost_in_kill": len(lost_answers),
            "of_which_already_stored": stored_unanswered, "jobs": JOBS, "agent_runs": runs}, indent=1))
    finally:
        for a in agents:
            with contextlib.suppress(Exception):
                a.stop()
        for o in (second, first):
            if o is not None:
                o.stop()


async def _rows_are(dsn: str, node: str, n: int) -> bool:
    rows, _ = await stored_samples(dsn, node)
    return rows >= n
