"""The message contract: valid messages parse, off-contract ones are refused naming the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services import subjects
from services.bus import decode
from services.errors import HTTP_STATUS, MalformedMessage
from services.schemas import Heartbeat, JobSpec, JobState, JobStateEvent, TelemetryBatch, TelemetrySample
from services.schemas.jobs import FINAL_STATES, TRANSITIONS

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def sample(**kw) -> dict:
    base = {"time": "2026-01-01T00:00:00Z", "node": "n1", "gpu_index": 0, "gpu_uuid": "GPU-1", "name": "NVIDIA L4",
            "util_gpu_pct": 50, "util_mem_pct": 20, "mem_used_mb": 100, "mem_total_mb": 23034, "temp_c": 50,
            "power_w": 40, "power_limit_w": 72, "sm_clock_mhz": 1500, "mem_clock_mhz": 6000, "pstate": 0,
            "throttle_reasons": [], "fan_pct": None}
    base.update(kw)
    return base


def test_sample_round_trip_keeps_every_field():
    s = TelemetrySample.model_validate(sample())
    again = TelemetrySample.model_validate_json(s.to_bytes())
    assert again == s
    assert again.time == NOW and again.time.tzinfo is not None


def test_unsupported_fields_are_null_not_invented():
    s = TelemetrySample.model_validate(sample(util_gpu_pct=None, temp_c=None, power_w=None))
    assert s.util_gpu_pct is None and s.temp_c is None and s.power_w is None
    assert s.fan_pct is None  # datacenter GPUs have no fan reading


@pytest.mark.parametrize("field,value", [("util_gpu_pct", 101), ("util_gpu_pct", -1), ("gpu_index", -1),
                                         ("mem_used_mb", -5), ("time", "2026-01-01T00:00:00")])
def test_sample_refuses_out_of_range(field, value):
    with pytest.raises(ValidationError) as info:
        TelemetrySample.model_validate(sample(**{field: value}))
    assert field in str(info.value)


def test_wrong_schema_version_is_refused():
    with pytest.raises(ValidationError):
        TelemetrySample.model_validate(sample(v=2))


def test_batch_samples_must_belong_to_its_node():
    with pytest.raises(ValidationError, match="names node"):
        TelemetryBatch.model_validate({"node": "n1", "seq": 0, "time": NOW, "samples": [sample(node="n2")]})


def test_batch_msg_id_is_stable_per_tick():
    b = TelemetryBatch(node="n1", seq=3, time=NOW, samples=[TelemetrySample.model_validate(sample())])
    assert b.msg_id() == TelemetryBatch.model_validate_json(b.to_bytes()).msg_id()


def test_decode_names_subject_and_field():
    with pytest.raises(MalformedMessage) as info:
        decode(TelemetryBatch, b'{"node": "n1", "seq": -1, "time": "2026-01-01T00:00:00Z", "samples": []}',
               "aether.telemetry.n1")
    assert "aether.telemetry.n1" in info.value.message and "seq" in info.value.message
    with pytest.raises(MalformedMessage):
        decode(Heartbeat, b"not json", "aether.heartbeat.n1")
    with pytest.raises(MalformedMessage, match="bytes"):
        decode(Heartbeat, b" " * (2 * 1024 * 1024), "aether.heartbeat.n1")


def test_job_spec_minimal_and_defaults():
    spec = JobSpec.model_validate({"name": "train-1", "command": ["python", "-c", "print(1)"]})
    assert spec.gpus == 1 and spec.job_type == "batch" and spec.max_duration_s == 3600


@pytest.mark.parametrize("body,field", [
    ({"name": "../etc", "command": ["x"]}, "name"),
    ({"name": "a..b", "command": ["x"]}, "name"),
    ({"name": "ok", "command": ["x"], "gpus": 0}, "gpus"),
    ({"name": "ok", "command": ["x"], "gpus": 100000}, "gpus"),
    ({"name": "ok", "command": ["x"], "max_duration_s": 10**9}, "max_duration_s"),
    ({"name": "ok", "command": ["x"], "env": {"CUDA_VISIBLE_DEVICES": "0"}}, "env"),
    ({"name": "ok", "command": ["x"], "env": {"A": "x" * 40000}}, "env"),
    ({"name": "ok", "command": ["x"], "requirements": ["--index-url http://evil"]}, "requirements"),
    ({"name": "ok", "command": ["x"], "surprise": 1}, "surprise"),
    ({"name": "ok", "command": ["x"], "tenant": "Bad Tenant"}, "tenant"),
])
def test_job_spec_refusals_name_the_field(body, field):
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(body)
    assert any(field in ".".join(str(p) for p in e["loc"]) or field in e["msg"] for e in info.value.errors())


def test_job_spec_needs_exactly_one_program():
    with pytest.raises(ValidationError, match="exactly one"):
        JobSpec.model_validate({"name": "x"})
    with pytest.raises(ValidationError, match="exactly one"):
        JobSpec.model_validate({"name": "x", "command": ["a"], "script": "print(1)"})


def test_state_machine_shape():
    for final in FINAL_STATES:
        assert TRANSITIONS[final] == frozenset()
    assert JobState.RUNNING in TRANSITIONS[JobState.SCHEDULED]
    assert JobState.PENDING not in TRANSITIONS[JobState.RUNNING]  # a running job is never silently re-queued
    ev = JobStateEvent(job_id="j", state=JobState.RUNNING, prev_state=JobState.SCHEDULED, time=NOW, source="agent")
    assert JobStateEvent.model_validate_json(ev.to_bytes()) == ev


def test_subjects_refuse_node_names_that_break_tokens():
    assert subjects.telemetry("gpu-node_1") == "aether.telemetry.gpu-node_1"
    for bad in ("a.b", "a*", ">", "", "a b"):
        with pytest.raises(ValueError):
            subjects.telemetry(bad)
    assert subjects.node_of("aether.telemetry.n1") == "n1"
    assert subjects.node_of("aether.jobs.x.state") is None


def test_every_error_code_has_a_status():
    for code in ("INVALID_JOB", "RESOURCE_EXHAUSTED", "NO_GPU_WORKERS", "QUEUE_FULL", "TENANT_QUOTA_EXCEEDED",
                 "JOB_NOT_FOUND", "UNAUTHORIZED"):
        assert code in HTTP_STATUS
    assert HTTP_STATUS["QUEUE_FULL"] == 429 and HTTP_STATUS["RESOURCE_EXHAUSTED"] == 503
