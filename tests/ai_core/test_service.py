"""The AI core over HTTP: one batch of scores, an explanation, constraints, NO_MODEL, and hot reload over NATS."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import nats
import pytest

from ai_core import features as F
from orchestrator.placement import Placer
from services import subjects
from services.localstack import free_port
from services.schemas.placement import ModelUpdated, PlacementDecision
from tests.ai_core.conftest import gpu, job, until
from tests.support.procs import Service


def start_ai_core(model_dir, nats_url: str | None = None) -> Service:
    port = free_port()
    env = {"AI_CORE_PORT": str(port), "AI_CORE_MODEL_DIR": str(model_dir), "AI_CORE_PREDICT_THREADS": "1",
           "AI_CORE_NATS_ENABLED": "true" if nats_url else "false", "NATS_URL": nats_url or "nats://127.0.0.1:1"}
    return Service("ai_core", env=env, port=port).start(timeout=60)


def body(j, cands, job_id="job-1"):
    return {"job_id": job_id, "job": j.model_dump(), "candidates": [c.model_dump() for c in cands]}


def metric(text: str, sample: str) -> float:
    """The value of one sample (`name` or `name{labels}`) in a Prometheus text page; 0 when absent."""
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == sample:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def ai_core(registry, small_booster):
    version = registry.save(small_booster, {"source": "test", "rows": 4000})
    svc = start_ai_core(registry.root)
    yield svc, version
    svc.stop()


async def test_place_scores_every_candidate_in_one_batch_and_explains(ai_core):
    svc, version = ai_core
    cands = [gpu(0, "a"), gpu(1, "a", util_gpu_pct=95, job_types=["training"], jobs_running=1, mem_free_mb=40000),
             gpu(2, "a", mem_free_mb=5000), gpu(0, "b", healthy=False), gpu(1, "b", temp_c=86, model_resident=True),
             gpu(2, "b")]
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
        r = await http.post("/v1/place", json=body(job(model="m"), cands))
        assert r.status_code == 200, r.text
        d = PlacementDecision.model_validate_json(r.content)
        assert d.policy == "xgboost" and d.model_version == version and d.job_id == "job-1"
        # Every candidate that passes the hard constraints is scored; the others say why not.
        assert set(d.scores) == {"GPU-a-0", "GPU-a-1", "GPU-b-1", "GPU-b-2"}
        assert set(d.rejected) == {"GPU-a-2", "GPU-b-0"} and d.rejected["GPU-b-0"] == "unhealthy"
        assert d.chosen_uuid == min(d.scores, key=d.scores.get) and d.chosen_uuids == [d.chosen_uuid]
        assert all(s > 0 for s in d.scores.values())
        # Contributions for the chosen GPU and the runner-up only, at most top_contributions each.
        assert d.runner_up_uuid and d.runner_up_uuid != d.chosen_uuid
        for contribs in (d.contributions, d.runner_up_contributions):
            assert 1 <= len(contribs) <= 8
            assert all(c.feature in F.FEATURES for c in contribs)
            mags = [abs(c.contribution) for c in contribs]
            assert mags == sorted(mags, reverse=True)

        # A two-GPU job gets two GPUs of one node.
        r = await http.post("/v1/place", json=body(job(gpus=2), cands, "job-2"))
        d2 = PlacementDecision.model_validate_json(r.content)
        assert len(d2.chosen_uuids) == 2 and len({u.split("-")[1] for u in d2.chosen_uuids}) == 1

        # Bad input: a stable code naming the field; nothing fits: RESOURCE_EXHAUSTED.
        bad = body(job(), cands)
        bad["candidates"][0]["surprise"] = 1
        bad["job"]["gpus"] = 0
        r = await http.post("/v1/place", json=bad)
        assert r.status_code == 422 and r.json()["code"] == "INVALID_REQUEST" and r.json()["field"] == "job.gpus"
        r = await http.post("/v1/place", json=body(job(gpu_mem_mb=900000), cands))
        assert r.status_code == 503 and r.json()["code"] == "RESOURCE_EXHAUSTED"

        info = (await http.get("/v1/model")).json()
        assert info["version"] == version and info["loaded"] is True
        text = (await http.get("/metrics")).text
        assert metric(text, "aether_ai_core_decision_seconds_count") == 2
        assert metric(text, 'aether_ai_core_decisions_total{outcome="ok"}') == 2
        assert metric(text, "aether_ai_core_candidates_count") == 3  # one batch per parsed request
        assert f'aether_ai_core_model_info{{version="{version}"}} 1.0' in text

    # The orchestrator's client on the live path keeps what the decision was made on.
    placer = Placer(base_url=svc.url, timeout_s=5)
    try:
        d3 = await placer.place("job-3", job(), cands)
    finally:
        await placer.aclose()
    assert d3.policy == "xgboost" and d3.fallback_reason is None and d3.model_version == version
    assert d3.job == job() and [c.gpu_uuid for c in d3.chosen_state] == [d3.chosen_uuid]


async def test_no_model_then_hot_reload_over_nats(registry, small_booster, nats_server):
    svc = start_ai_core(registry.root, nats_server.url)
    nc = await nats.connect(nats_server.url)
    cands = [gpu(0, "a"), gpu(1, "a", util_gpu_pct=50)]
    try:
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            r = await http.post("/v1/place", json=body(job(), cands))
            assert r.status_code == 503 and r.json()["code"] == "NO_MODEL"
            health = (await http.get("/health")).json()
            assert health["status"] == "degraded" and health["model_version"] is None

            placer = Placer(base_url=svc.url, timeout_s=5)
            d = await placer.place("job-nm", job(), cands)
            await placer.aclose()
            assert d.policy == "heuristic" and d.fallback_reason == "NO_MODEL"

            async def version_in_decisions():
                resp = await http.post("/v1/place", json=body(job(), cands))
                return resp.json().get("model_version") if resp.status_code == 200 else None

            await until(lambda: _nats_ready(http), 30, "AI core subscribed to model updates")
            for _ in range(2):  # two successive versions, each picked up without a restart
                v = registry.save(small_booster, {"source": "test", "rows": 4000}, activate=False)
                await nc.publish(subjects.MODEL_UPDATED,
                                 ModelUpdated(version=v, time=datetime.now(UTC), source="test").to_bytes())
                await until(lambda v=v: _equals(version_in_decisions(), v), 30, f"decisions from {v}")

            # A malformed update is counted and dead-lettered; the model being served stays.
            dead = await nc.subscribe(f"{subjects.DEADLETTER_PREFIX}.model")
            await nc.publish(subjects.MODEL_UPDATED, b'{"v": 1, "version": "../etc"}')
            msg = await dead.next_msg(timeout=10)
            assert msg.headers["Aether-Original-Subject"] == subjects.MODEL_UPDATED
            # A version that is not on disk is refused; the served model stays.
            await nc.publish(subjects.MODEL_UPDATED, ModelUpdated(version="20990101T000000000000Z-abcdef",
                                                                  time=datetime.now(UTC)).to_bytes())

            async def failed_reload():
                text = (await http.get("/metrics")).text
                return metric(text, 'aether_ai_core_model_reloads_total{result="failed"}') == 1

            await until(failed_reload, 30, "the failed reload to be counted")
            assert metric((await http.get("/metrics")).text, "aether_ai_core_malformed_messages_total") == 1
            assert await version_in_decisions() == v
    finally:
        await nc.close()
        svc.stop()


async def _nats_ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/health")).json()["nats"] == "connected"


async def _equals(coro, expected) -> bool:
    return (await coro) == expected


def test_unknown_fields_in_the_job_are_refused_too(ai_core):
    svc, _ = ai_core
    b = body(job(), [gpu(0)])
    b["extra"] = True
    r = httpx.post(svc.url + "/v1/place", json=b, timeout=10)
    assert r.status_code == 422 and r.json()["field"] == "extra"
