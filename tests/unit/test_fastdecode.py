"""The compiled decoder (services/fastdecode.py) returns exactly what pydantic returns, and refuses what it refuses."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from services.bus import decode
from services.errors import MalformedMessage
from services.fastdecode import FastDecoder, UnsupportedField
from services.schemas import TelemetryBatch
from services.schemas.placement import ModelUpdated, PlacementRequest


def sample(i: int = 0, **kw) -> dict:
    base = {"v": 1, "time": "2026-01-01T00:00:00.123456Z", "node": "n1", "gpu_index": i, "gpu_uuid": f"GPU-{i}",
            "name": "NVIDIA H100 80GB HBM3", "healthy": True, "util_gpu_pct": 50.5, "util_mem_pct": 20,
            "mem_used_mb": 100, "mem_total_mb": 81559, "temp_c": 50, "power_w": 400.5, "power_limit_w": 700,
            "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "pstate": 0, "throttle_reasons": ["power_cap"],
            "fan_pct": None, "pci_bus_id": "00000000:18:00.0", "energy_mj": 1.5e9, "ecc_sbe": 0, "ecc_dbe": 0,
            "xid_errors": [79], "processes": [{"pid": 4242, "used_mem_mb": 1024}], "mig_mode": False}
    base.update(kw)
    return base


def batch(samples: list[dict] | None = None, **kw) -> dict:
    doc = {"v": 1, "node": "n1", "seq": 7, "time": "2026-01-01T00:00:00.123456Z", "interval_s": 1.0,
           "samples": samples if samples is not None else [sample(i) for i in range(4)]}
    doc.update(kw)
    return doc


FAST = FastDecoder(TelemetryBatch)


def dumps(doc) -> bytes:
    # The standard library writes what orjson will not: integers past 64 bits, lone surrogates (as \ud800),
    # Infinity (not JSON at all): each one a case for the decoders.
    return json.dumps(doc).encode()


def outcome(model: type[BaseModel], data: bytes, fast: FastDecoder | None = None):
    """('ok', repr of the dump) or ('refused', the error list): repr tells 1 from 1.0 and one tz from another."""
    try:
        obj = fast.decode(data) if fast is not None else model.model_validate_json(data)
    except ValidationError as exc:
        return "refused", [(e["loc"], e["type"]) for e in exc.errors()]
    assert type(obj) is model
    return "ok", repr(obj.model_dump()), repr(obj)


def same(data: bytes, model: type[BaseModel] = TelemetryBatch, fast: FastDecoder = FAST):
    expected = outcome(model, data)
    assert outcome(model, data, fast) == expected
    return expected[0]


def test_a_well_formed_batch_takes_the_compiled_path_and_equals_pydantics():
    data = dumps(batch())
    before = FAST.fast
    assert same(data) == "ok"
    assert FAST.fast == before + 1
    got = FAST.decode(data)
    assert got == TelemetryBatch.model_validate_json(data)
    assert got.samples[0].processes[0].pid == 4242 and type(got.samples[0].processes[0]).__name__ == "GpuProcess"
    assert got.samples[0].time.utcoffset().total_seconds() == 0
    # Defaults come fresh per instance, as pydantic's default_factory makes them.
    a = FAST.decode(dumps(batch([{k: v for k, v in sample().items() if k != "xid_errors"}])))
    b = FAST.decode(dumps(batch([{k: v for k, v in sample().items() if k != "xid_errors"}])))
    a.samples[0].xid_errors.append(1)
    assert b.samples[0].xid_errors == []


HOSTILE_SAMPLE_EDITS = [
    {"util_gpu_pct": "50"},  # a numeric string: pydantic's lax mode takes it, msgspec defers
    {"util_gpu_pct": 101}, {"util_gpu_pct": -0.1}, {"gpu_index": 1024}, {"gpu_index": 3.0}, {"gpu_index": 3.5},
    {"gpu_index": True}, {"healthy": 1}, {"healthy": "true"}, {"pstate": 33}, {"node": ""}, {"node": "x" * 65},
    {"gpu_uuid": None}, {"name": 5}, {"time": "2026-01-01T00:00:00"}, {"time": "2026-01-01T02:00:00+02:00"},
    {"time": "2026-01-01T00:00:00.1234567Z"}, {"time": "2026-01-01T00:00:00.123456789+05:30"},
    {"time": "2026-01-01"}, {"time": 1767225600}, {"time": "2026-01-01 00:00:00Z"}, {"time": "2026-13-01T00:00:00Z"},
    {"time": "2026-01-01T23:59:60Z"}, {"time": "2026-01-01T00:00:00z"}, {"time": "2026-01-01T00:00:00-00:00"},
    {"time": "2026-01-01T00:00Z"}, {"time": "20260101T000000Z"}, {"time": "2026-01-01T00:00:00+2400"},
    {"xid_errors": None}, {"xid_errors": [1.5]}, {"xid_errors": ["79"]}, {"throttle_reasons": "hw"},
    {"throttle_reasons": [None]}, {"processes": [{"pid": "1"}]}, {"processes": [{}]}, {"processes": {}},
    {"processes": [{"pid": 1, "used_mem_mb": None, "extra": 1}]}, {"fan_pct": -1}, {"mig_mode": None},
    {"energy_mj": 10**30}, {"ecc_sbe": 2**70}, {"ecc_sbe": -(2**70)}, {"unknown_field": [1, 2]}, {"v": 2},
    {"v": "1"}, {"v": 1.0}, {"node": "n2"}, {"name": "\u0000"}, {"name": "\ud800"}, {"error": "é" * 10},
    {"power_w": 1e308}, {"power_w": float("inf")},
]


@pytest.mark.parametrize("edit", HOSTILE_SAMPLE_EDITS, ids=lambda e: ",".join(e))
def test_hostile_sample_fields_get_the_answer_pydantic_gives(edit):
    same(dumps(batch([sample(0), sample(1, **edit)])))


@pytest.mark.parametrize("raw", [
    b"", b"null", b"[]", b"{}", b"{", b'{"node": "n1"}', b'{"v":1,"node":"n1","seq":1,"time":"2026-01-01T00:00:00Z"}',
    b'{"v":1,"node":"n1","seq":1,"time":"2026-01-01T00:00:00Z","samples":[]} trailing',
    b'{"v":1,"node":"n1","seq":-1,"time":"2026-01-01T00:00:00Z","samples":[]}',
    b'{"v":1,"node":"n1","seq":1,"time":"2026-01-01T00:00:00Z","samples":[],"interval_s":0}',
    b'{"v":1,"node":"n1","seq":1,"time":"2026-01-01T00:00:00Z","samples":[],"interval_s":NaN}',
    b'{"v":1,"node":"n1","seq":1,"time":"2026-01-01T00:00:00Z","samples":[],"seq":2}',
    b'\xef\xbb\xbf{"v":1,"node":"n1","seq":1,"time":"2026-01-01T00:00:00Z","samples":[]}',
    b'{"v":1,"node":"n\\u0031","seq":1,"time":"2026-01-01T00:00:00Z","samples":[]}',
])
def test_malformed_documents_get_the_answer_pydantic_gives(raw):
    same(raw)


def test_too_many_samples_are_refused_as_pydantic_refuses_them():
    assert same(dumps(batch([sample(i % 1000) for i in range(1025)]))) == "refused"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+01:00", "1", "true"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(sample())), value=JSONISH, drop=st.booleans())
def test_any_value_in_any_field_gets_the_answer_pydantic_gives(field, value, drop):
    s = sample(1)
    if drop:
        s.pop(field)
    else:
        s[field] = value
    same(dumps(batch([sample(0), s])))


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(["v", "node", "seq", "time", "interval_s", "samples", "other"]), value=JSONISH)
def test_any_value_in_any_batch_field_gets_the_answer_pydantic_gives(field, value):
    doc = batch()
    doc[field] = value
    same(dumps(doc))


def test_strict_bodies_refuse_unknown_fields_as_pydantic_does():
    fast = FastDecoder(PlacementRequest)
    cand = {"gpu_uuid": "GPU-0", "node": "n1", "index": 0, "mem_total_mb": 81559, "mem_free_mb": 40000}
    good = {"job": {"gpus": 1, "gpu_mem_mb": 1000}, "candidates": [cand]}
    assert same(dumps(good), PlacementRequest, fast) == "ok"
    # Candidates, unlike the body, ignore what they do not know (newer orchestrators may send more).
    assert same(dumps({**good, "candidates": [{**cand, "surprise": True}]}), PlacementRequest, fast) == "ok"
    for bad in ({**good, "extra": 1}, {**good, "candidates": [{**cand, "mem_free_mb": 1e10}]},
                {**good, "job": {"gpu_mem_mb": -1}}, {**good, "candidates": []}):
        assert same(dumps(bad), PlacementRequest, fast) == "refused"


def test_bus_decode_with_the_compiled_decoder_names_the_field_as_before():
    doc = batch([sample(0, util_gpu_pct=250)])
    with pytest.raises(MalformedMessage) as fast_err:
        decode(TelemetryBatch, dumps(doc), "aether.telemetry.n1", FAST)
    with pytest.raises(MalformedMessage) as slow_err:
        decode(TelemetryBatch, dumps(doc), "aether.telemetry.n1")
    assert fast_err.value.message == slow_err.value.message
    assert "samples.0.util_gpu_pct" in fast_err.value.message


def test_fields_it_cannot_mirror_exactly_are_refused_when_compiled():
    with pytest.raises(UnsupportedField, match="pattern"):
        FastDecoder(ModelUpdated)  # pydantic's regex dialect is not msgspec's

    class Aliased(BaseModel):
        x: int = Field(alias="X")

    with pytest.raises(UnsupportedField, match="alias"):
        FastDecoder(Aliased)


def test_a_decoded_instance_behaves_as_a_validated_one():
    got = FAST.decode(dumps(batch()))
    again = copy.deepcopy(got)
    again.samples[0].util_gpu_pct = 1.0  # pydantic's own __setattr__ on a constructed instance
    assert again.samples[0].util_gpu_pct == 1.0 and got.samples[0].util_gpu_pct == 50.5
    assert TelemetryBatch.model_validate_json(got.model_dump_json()) == got
    assert got.model_copy(update={"seq": 8}).seq == 8
