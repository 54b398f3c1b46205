"""The pure parts of jobs: the state machine, the fair queue, memory accounting and candidate selection."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.cluster import Cluster
from orchestrator.jobs.accounting import Accounting, Capacity, build_pool, select
from orchestrator.jobs.model import Job
from orchestrator.jobs.queue import JobQueue
from orchestrator.jobs.states import Refused, Transition, advance
from services.schemas import GpuInventory, Heartbeat, JobSpec, JobState, TelemetrySample

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def mkjob(n: int, *, tenant: str = "a", priority: int = 0, gpus: int = 1, mem: int = 1024,
          state: JobState = JobState.PENDING, node: str | None = None) -> Job:
    spec = JobSpec(name=f"j{n}", command=["true"], priority=priority, gpus=gpus, gpu_mem_mb=mem)
    job = Job.from_spec(f"j{n:016x}", spec, tenant, "test", T0 + timedelta(seconds=n))
    return job.copy(state=state, node=node, attempt=1 if node else 0,
                    assignment=[{"uuid": f"G-{node}-0", "index": 0}] if node else None)


# --- state machine ----------------------------------------------------------------------------------------
def test_valid_path_sets_times_and_outcome():
    job = mkjob(1)
    a = advance(job, Transition(job.id, JobState.SCHEDULED, assign_node="n1",
                                assignment=[{"uuid": "G1", "index": 3}], time=T0 + timedelta(seconds=5)))
    assert a.prev == JobState.PENDING and a.job.attempt == 1 and a.job.node == "n1" and a.job.gpu_indices == [3]
    assert a.duration_s == pytest.approx(4.0)  # submitted at T0+1s
    b = advance(a.job, Transition(job.id, JobState.RUNNING, source="agent", node="n1", attempt=1, pid=7,
                                  time=T0 + timedelta(seconds=6)))
    c = advance(b.job, Transition(job.id, JobState.SUCCEEDED, source="agent", node="n1", attempt=1, exit_code=0,
                                  result={"x": 1}, time=T0 + timedelta(seconds=9)))
    assert c.job.state == JobState.SUCCEEDED and c.job.result == {"x": 1} and c.job.exit_code == 0
    assert c.job.finished_at - c.job.started_at == timedelta(seconds=3)
    assert job.state == JobState.PENDING  # never mutated


def test_invalid_and_duplicate_transitions_are_refused():
    job = mkjob(1)
    with pytest.raises(Refused) as e:
        advance(job, Transition(job.id, JobState.RUNNING))
    assert not e.value.duplicate and "not a valid transition" in e.value.reason
    with pytest.raises(Refused) as e:
        advance(job, Transition(job.id, JobState.PENDING))
    assert e.value.duplicate
    done = job.copy(state=JobState.SUCCEEDED)
    for to in JobState:
        with pytest.raises(Refused):
            advance(done, Transition(job.id, to))


def test_agent_reports_must_come_from_the_assigned_node_and_attempt():
    job = mkjob(1, state=JobState.SCHEDULED, node="n1")
    with pytest.raises(Refused) as e:
        advance(job, Transition(job.id, JobState.RUNNING, source="agent", node="n2", attempt=1))
    assert e.value.stale_node
    with pytest.raises(Refused) as e:
        advance(job, Transition(job.id, JobState.RUNNING, source="agent", node="n1", attempt=2))
    assert not e.value.stale_node and "attempt" in e.value.reason
    assert advance(job, Transition(job.id, JobState.RUNNING, source="agent", node="n1", attempt=1)).job.pid is None


def test_late_running_report_after_the_final_one_is_old_news():
    job = mkjob(1, state=JobState.SUCCEEDED, node="n1")
    with pytest.raises(Refused) as e:
        advance(job, Transition(job.id, JobState.RUNNING, source="agent", node="n1", attempt=1))
    assert e.value.duplicate and "late RUNNING" in e.value.reason
    with pytest.raises(Refused) as e:  # from the orchestrator it is simply invalid
        advance(job, Transition(job.id, JobState.RUNNING))
    assert not e.value.duplicate


def test_guards_only_from_and_only_attempt():
    job = mkjob(1, state=JobState.RUNNING, node="n1")
    with pytest.raises(Refused):
        advance(job, Transition(job.id, JobState.PENDING, only_from=frozenset({JobState.SCHEDULED})))
    with pytest.raises(Refused):
        advance(job, Transition(job.id, JobState.LOST, only_attempt=2))
    lost = advance(job, Transition(job.id, JobState.LOST, only_attempt=1, reason="node down")).job
    assert lost.lost_count == 1
    back = advance(lost, Transition(job.id, JobState.PENDING)).job
    assert back.node is None and back.assignment is None and back.attempt == 1


# --- queue ------------------------------------------------------------------------------------------------
def test_queue_orders_by_priority_then_age():
    q = JobQueue()
    for job in (mkjob(1), mkjob(2, priority=5), mkjob(3), mkjob(4, priority=5)):
        q.add(job)
    assert [j.name for j in q.ordered()] == ["j2", "j4", "j1", "j3"]


def test_queue_is_fair_across_tenants():
    q = JobQueue()
    for n in range(1, 5):
        q.add(mkjob(n, tenant="big"))
    q.add(mkjob(10, tenant="small"))
    q.add(mkjob(11, tenant="small"))
    usage: dict[str, float] = {"big": 3.0}  # big already holds 3 GPUs
    order = []
    for job in q.ordered(usage):
        order.append(job.tenant)
        usage[job.tenant] = usage.get(job.tenant, 0.0) + job.gpus  # what the scheduler does as it places
    # small goes first while it holds fewer GPUs, even though big's jobs are older
    assert order[:3] == ["small", "small", "big"]
    assert order.count("big") == 4


def test_queue_remove_and_requeue_keeps_age():
    q = JobQueue()
    jobs = [mkjob(n) for n in range(1, 4)]
    for j in jobs:
        q.add(j)
    assert q.remove(jobs[0].id) is not None and jobs[0].id not in q
    q.add(jobs[0])  # re-queued after a loss: still the oldest
    assert [j.id for j in q.ordered()][0] == jobs[0].id
    assert q.remove("nope") is None and len(q) == 3


# --- accounting and candidates --------------------------------------------------------------------------
def cluster_with(nodes: dict[str, int], mem: float = 16000, used: float = 0.0) -> Cluster:
    c = Cluster(stale_after_s=10)
    now = datetime.now(UTC)
    for node, n in nodes.items():
        c.apply_heartbeat(Heartbeat(node=node, time=now, agent_version="t", interval_s=1, gpus=[
            GpuInventory(uuid=f"G-{node}-{i}", index=i, name="x", mem_total_mb=mem) for i in range(n)]))
        for i in range(n):
            c.apply_sample(TelemetrySample(time=now, node=node, gpu_index=i, gpu_uuid=f"G-{node}-{i}", name="x",
                                           mem_used_mb=used, mem_total_mb=mem, util_gpu_pct=10.0 * i))
    return c


def test_free_memory_counts_promises_once():
    c = cluster_with({"n1": 1}, mem=16000, used=1000)  # 1000 MB used by something else
    acc = Accounting(c)
    gpu = c.gpus["G-n1-0"]
    assert acc.free_mb(gpu) == 15000
    acc.reserve("j1", "a", ["G-n1-0"], 4000, "batch", None)
    assert acc.free_mb(gpu) == 11000 and gpu.reserved_mb == 4000 and gpu.jobs == {"j1"}
    acc.mark_running("j1")
    # The job's memory now shows in telemetry: it is not counted a second time.
    gpu.sample = gpu.sample.model_copy(update={"mem_used_mb": 5000})
    assert acc.free_mb(gpu) == 11000
    # Using more than promised counts against the GPU too.
    gpu.sample = gpu.sample.model_copy(update={"mem_used_mb": 7000})
    assert acc.free_mb(gpu) == 9000
    acc.release("j1")
    assert gpu.reserved_mb == 0 and not gpu.jobs and acc.tenant_gpus == {}


def test_pool_excludes_unhealthy_stale_and_excluded_gpus():
    c = cluster_with({"n1": 2, "n2": 1})
    c.gpus["G-n1-1"].excluded_reason = "critical alert"
    c.nodes["n2"].healthy = False
    acc = Accounting(c)
    assert [g.uuid for g in build_pool(acc).gpus] == ["G-n1-0"]
    assert build_pool(acc, now_mono=time.monotonic() + 60).gpus == []  # every sample stale


def test_pool_is_eligible_gpus_with_their_free_memory():
    """build_pool's one loop: exactly the eligible GPUs, with `free_mb`'s free memory, on a mixed cluster."""
    c = cluster_with({f"n{i}": 4 for i in range(6)}, mem=16000, used=700)
    acc = Accounting(c)
    c.gpus["G-n0-1"].excluded_reason = "critical alert"
    c.gpus["G-n1-2"].reported_healthy = False
    c.nodes["n2"].healthy = False
    c.gpus["G-n3-0"].sample = c.gpus["G-n3-0"].sample.model_copy(update={"healthy": False})
    c.gpus["G-n3-1"].sample = c.gpus["G-n3-1"].sample.model_copy(update={"mem_used_mb": None})
    c.gpus["G-n4-0"].sample_mono -= 60  # stale
    acc.reserve("j1", "a", ["G-n5-0", "G-n5-1"], 3000, "batch", None)
    acc.reserve("j2", "a", ["G-n5-0"], 2000, "training", None, running=True)
    acc.reserve("j3", "b", ["G-n4-3"], 9000, "batch", None, running=True)  # running past what it promised: 700 used
    now = time.monotonic()
    pool = build_pool(acc, now_mono=now)
    out = {"G-n0-1", "G-n1-2", *(f"G-n2-{i}" for i in range(4)), "G-n3-0", "G-n4-0"}
    expect = [g for g in c.gpus.values() if g.uuid not in out]
    assert [g.uuid for g in pool.gpus] == [g.uuid for g in expect] and len(expect) == 24 - 8
    assert pool.free.tolist() == [acc.free_mb(g) for g in expect]
    assert pool.util.tolist() == [g.sample.util_gpu_pct or 0.0 for g in expect]
    assert [pool.nodes[i] for i in pool.node_of] == [g.node for g in expect]


def test_select_caps_candidates_and_keeps_multi_gpu_on_one_node():
    c = cluster_with({f"n{i}": 4 for i in range(10)})
    pool = build_pool(Accounting(c))
    pos = select(pool, 1000, 1, 8)
    assert 1 <= len(pos) <= 8
    pool.free[pool.pos["G-n3-0"]] = 500  # too little for a 1000 MB job
    assert pool.pos["G-n3-0"] not in set(select(pool, 1000, 1, 100).tolist())
    multi = select(pool, 1000, 4, 8)
    nodes = {pool.gpus[int(i)].node for i in multi}
    assert all(sum(pool.gpus[int(i)].node == n for i in multi) >= 4 for n in nodes)
    assert "n3" not in nodes  # n3 has only 3 GPUs that fit
    assert len(select(pool, 1000, 1, 100, avoid_nodes={"n0"})) == 40 - 1 - 4


def test_capacity_says_what_could_ever_fit():
    c = cluster_with({"n1": 2}, mem=16000)
    cap = Capacity(c, max_age_s=0.0)
    assert cap.check(2, 16000) == (True, True)
    assert cap.check(3, 1000) == (True, False)
    assert cap.check(1, 20000) == (True, False)
    c.gpus["G-n1-1"].reported_healthy = False
    assert cap.check(2, 1000) == (True, False)
    c.nodes["n1"].healthy = False
    assert cap.check(1, 1000) == (False, True)  # down: no worker now, but it could hold the job
    assert Capacity(Cluster()).check(1, 1) == (False, False)


# --- the submission fast lane -------------------------------------------------------------------------------
async def test_fast_lane_takes_plain_submissions_and_passes_everything_else_on(monkeypatch):
    from orchestrator.api import fastlane
    from orchestrator.errors import Unauthorized

    passed_on: list[str] = []

    async def framework(scope, receive, send):
        passed_on.append(f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}")

    async def admit(request, principal):
        return 201, {"job_id": "j1", "state": principal}

    def submitter(request):
        if request.headers.get("authorization") != "Bearer good":
            raise Unauthorized("invalid token")
        return "PENDING"

    monkeypatch.setattr(fastlane, "admit", admit)
    monkeypatch.setattr(fastlane, "_require_submitter", submitter)
    lane = fastlane.SubmitFastLane(framework)

    async def call(method="POST", path="/v1/jobs", query=b"", headers=((b"authorization", b"Bearer good"),)):
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        await lane({"type": "http", "method": method, "path": path, "query_string": query,
                    "headers": list(headers)}, receive, send)
        return sent

    sent = await call()
    assert sent[0]["status"] == 201 and json.loads(sent[1]["body"]) == {"job_id": "j1", "state": "PENDING"}
    sent = await call(headers=((b"authorization", b"Bearer bad"),))
    assert sent[0]["status"] == 401 and json.loads(sent[1]["body"])["code"] == "UNAUTHORIZED"
    assert passed_on == []
    for kw in ({"method": "GET"}, {"path": "/v1/jobs/"}, {"query": b"x=1"},
               {"headers": ((b"origin", b"http://127.0.0.1:3000"), (b"authorization", b"Bearer good"))}):
        assert await call(**kw) == []
    assert len(passed_on) == 4
