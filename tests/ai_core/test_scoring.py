"""The decision rule's shortcuts change no decision: the JSON fast path reads what the models read, and pruning
the co-runner delay of GPUs that cannot win leaves the choice and the runner-up as the full computation has them."""

import json

import numpy as np
import orjson
import pytest

from ai_core import features as F
from ai_core.scoring import FIRST_ROUND, costs, decide, parse_fast, place
from services.schemas.placement import Candidate, PlacementRequest
from tests.ai_core.conftest import gpu, job


def cluster(n: int, rng: np.random.Generator, busy_share: float) -> list[Candidate]:
    types = list(F.JOB_TYPES)
    out = []
    for i in range(n):
        k = int(rng.integers(1, 4)) if rng.random() < busy_share else 0
        used = float(rng.uniform(5000, 40000)) if k else 0.0
        out.append(gpu(i % 8, f"n{i // 8}", gpu_uuid=f"G{i}", mem_used_mb=used, mem_free_mb=81559 - used * 1.1,
                       util_gpu_pct=float(rng.uniform(20, 100)) if k else 0.0, temp_c=float(rng.uniform(35, 88)),
                       power_w=float(rng.uniform(70, 700)), jobs_running=k,
                       job_types=[types[int(rng.integers(0, 4))] for _ in range(k)],
                       throttle_reasons=["sw_thermal"] if rng.random() < 0.1 else [],
                       model_resident=bool(rng.random() < 0.2)))
    return out


def test_table_from_the_wire_is_the_table_from_the_models():
    cands = [gpu(0), gpu(1, "b", job_types=["training", "finetune"], jobs_running=1, model_resident=True,
                    throttle_reasons=["HwPowerBrake", "sw_thermal"], healthy=False, gpu_model="L4", temp_c=70.5)]
    minimal = {"gpu_uuid": "g", "node": "n", "index": 3, "mem_total_mb": 100, "mem_free_mb": 50}
    for dicts, models in (([orjson.loads(c.model_dump_json()) for c in cands], cands),
                          ([minimal], [Candidate(**minimal)])):  # left out: the models' defaults
        body = orjson.dumps({"job": {}, "candidates": dicts})
        parsed = parse_fast(body)
        assert parsed is not None
        a, b = F.table_from_candidates(models), parsed.table
        assert (a.uuids, a.nodes, a.indices) == (b.uuids, b.nodes, b.indices)
        assert a.node_ids.tolist() == b.node_ids.tolist() and a.num.keys() == b.num.keys()
        for k in a.num:
            assert a.num[k].tolist() == b.num[k].tolist(), k


@pytest.mark.parametrize(("field", "value"), [
    ("mem_free_mb", "30000"), ("mem_free_mb", True), ("index", 1.0), ("healthy", 1), ("job_types", ["a", 1]),
    ("temp_c", 2e9), ("gpu_uuid", None), ("jobs_running", None), ("mem_total_mb", 10**400)])
def test_what_the_models_would_coerce_or_refuse_is_left_to_them(field, value):
    d = orjson.loads(gpu(0).model_dump_json())
    d[field] = value

    def body(cands) -> bytes:
        return json.dumps({"job": {}, "candidates": cands}).encode()  # json: orjson refuses 10**400

    assert parse_fast(body([d])) is None
    del d[field]
    assert (parse_fast(body([d])) is None) == (field in ("mem_free_mb", "mem_total_mb", "index", "gpu_uuid"))
    assert parse_fast(body([1, 2])) is None


def test_the_fast_path_decides_as_the_models_do(small_model):
    req = PlacementRequest(job_id="j", job=job(model="m"), candidates=cluster(50, np.random.default_rng(1), 0.6))
    body = req.model_dump_json().encode()
    parsed = parse_fast(body)
    assert parsed is not None and parsed.job == req.job and parsed.job_id == "j" and parsed.explain
    a, b = place(req, small_model), decide(parsed, small_model)
    assert (a.chosen_uuid, a.runner_up_uuid, a.scores, a.rejected) == (b.chosen_uuid, b.runner_up_uuid, b.scores,
                                                                      b.rejected)
    assert a.contributions == b.contributions
    for broken in (b"{", b"[]", body.replace(b'"v":1', b'"v":2'), body.replace(b'"explain":true', b'"explain":1'),
                   body.replace(b'"job_id":"j"', b'"job_id":"j","extra":1'), body.replace(b'"gpus":1', b'"gpus":0')):
        assert parse_fast(broken) is None


@pytest.mark.parametrize("busy_share", [0.0, 0.5, 0.9, 1.0])
def test_pruned_costs_keep_the_choice_and_the_runner_up(small_model, busy_share):
    rng = np.random.default_rng(int(busy_share * 10))
    for n in (1, 2, 7, 40, FIRST_ROUND + 50):
        t = F.table_from_candidates(cluster(n, rng, busy_share))
        x = F.matrix(job(), t.num)
        _, full = costs(small_model, x, t.node_ids)
        _, pruned = costs(small_model, x, t.node_ids, prune=True)
        assert np.all(pruned <= full + 1e-12)  # a pruned cost is a lower bound
        top = np.argsort(full, kind="stable")[:2]
        assert np.argsort(pruned, kind="stable")[:2].tolist() == top.tolist()
        assert np.allclose(pruned[top], full[top])
