"""The AI core dies (SIGKILL) while jobs keep coming: placement falls back to the documented heuristic, each
decision recorded as such with the reason, every job still runs; when the AI core is back the model places again
without restarting anything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest

from orchestrator.placement import OPEN_FOR_S
from tests.faults.support import (
    agent,
    ai_core,
    ametric,
    fetch,
    headers,
    job_in,
    node_name,
    start_orchestrator,
    tiny_model,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WHILE_DOWN = 5


async def test_ai_core_down_falls_back_to_the_heuristic_and_recovers(nats_server, database_url, output_dir, tmp_path):
    version = await asyncio.to_thread(tiny_model, tmp_path / "models")
    core = ai_core(tmp_path / "models", output_dir / "ai_core.log")
    await asyncio.to_thread(core.start)
    orch = await asyncio.to_thread(start_orchestrator, nats_server.url, database_url, output_dir / "orchestrator.log",
                                   AI_CORE_URL=core.url)
    agt = agent(nats_server.url, node_name("ai"), output_dir)
    await asyncio.to_thread(agt.start)
    try:
        async with httpx.AsyncClient(base_url=orch.url, timeout=10, headers=headers()) as c:
            async def placeable():
                return sum(1 for g in (await c.get("/v1/gpus")).json() if g["healthy"]) == 2

            await until(placeable, 30, "the agent's GPUs placeable")

            async def run(name: str) -> dict:
                r = await c.post("/v1/jobs", json={"name": name, "command": ["true"]})
                assert r.status_code == 201, r.text
                return await until(lambda: job_in(c, r.json()["job_id"], "SUCCEEDED"), 30, f"{name} to succeed")

            before = await run("with-the-model")
            assert before["placement"]["policy"] == "xgboost", before["placement"]
            assert before["placement"]["model_version"] == version

            await asyncio.to_thread(core.kill)
            down = [await run(f"without-{i}") for i in range(WHILE_DOWN)]
            assert all(j["placement"]["policy"] == "heuristic" for j in down)
            reasons = [j["placement"]["fallback_reason"] for j in down]
            assert all(r.startswith(("UNREACHABLE", "CIRCUIT_OPEN")) for r in reasons), reasons

            await asyncio.to_thread(core.start)  # same port, same model directory
            back = [await run("back-0")]
            # The client stops calling a failing AI core for a few seconds (circuit breaker), then probes again:
            # bounded by time, not by a job count, since how many jobs fit in the pause depends on the machine.
            deadline = time.monotonic() + 4 * OPEN_FOR_S
            while back[-1]["placement"]["policy"] != "xgboost":
                assert time.monotonic() < deadline, "the model never placed again after the AI core came back"
                back.append(await run(f"back-{len(back)}"))

        rows = await fetch(database_url, "SELECT job_id, policy, fallback_reason, model_version FROM placements")
        by_job = {r["job_id"]: r for r in rows}
        assert len(rows) == 1 + WHILE_DOWN + len(back), "one placement row per job, no more"
        assert by_job[before["job_id"]]["policy"] == "xgboost" and by_job[before["job_id"]]["fallback_reason"] is None
        for j in down:
            rec = by_job[j["job_id"]]
            assert rec["policy"] == "heuristic" and rec["fallback_reason"] and rec["model_version"] is None
        assert by_job[back[-1]["job_id"]]["policy"] == "xgboost"
        heuristic = await ametric(orch.url, "aether_placements_total", policy="heuristic")
        assert heuristic == WHILE_DOWN + len(back) - 1
        (output_dir / "ai_core_down.json").write_text(json.dumps({
            "placed_by_model_before": 1, "placed_by_heuristic_while_down": WHILE_DOWN, "reasons": reasons,
            "jobs_until_model_placed_again": len(back), "all_succeeded": True}, indent=1))
    finally:
        for svc in (agt, orch, core):
            with contextlib.suppress(Exception):
                svc.stop()
