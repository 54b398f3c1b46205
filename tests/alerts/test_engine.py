"""The alert engine on its own (no I/O): every rule opens exactly one alert and resolves it once, hysteresis
keeps a hovering value from flapping, the anomaly detector finds a drift no threshold covers and stays quiet
when a job starts or stops."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.alerts.config import AlertSettings
from orchestrator.alerts.engine import AlertEngine
from orchestrator.alerts.hysteresis import AlertRecord
from services.schemas import AlertSeverity, AlertState, GpuInventory, Heartbeat
from tests.alerts.support import sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(engine: AlertEngine, n: int, node: str = "n1", start: int = 0, **fn) -> list[tuple[str, AlertRecord]]:
    """Feed `n` samples one second apart; each keyword is a function of the second giving that reading."""
    rng = random.Random(start)
    for i in range(start, start + n):
        fields = {k: f(i) for k, f in fn.items()}
        fields.setdefault("temp_c", 60.0 + rng.gauss(0, 0.3))
        engine.on_sample(sample(node, T0 + timedelta(seconds=i), **fields))
    out, engine.events = engine.events, []
    return out


def only(events, rule: str) -> list[tuple[str, AlertRecord]]:
    return [(e, r) for e, r in events if r.rule == rule]


def assert_one_cycle(events, rule: str, opened_at: int, resolved_at: int | None) -> AlertRecord:
    mine = only(events, rule)
    kinds = [e for e, _ in mine]
    assert kinds == (["opened", "resolved"] if resolved_at is not None else ["opened"]), mine
    rec = mine[0][1]
    assert rec.opened_at == T0 + timedelta(seconds=opened_at)
    if resolved_at is not None:
        assert rec.state is AlertState.RESOLVED
        assert rec.resolved_at == T0 + timedelta(seconds=resolved_at)
    return rec


def test_temperature_opens_once_holds_through_hovering_and_resolves_once():
    eng = AlertEngine(AlertSettings())

    def temp(i: int) -> float:
        if 20 <= i < 60:
            return 90.0
        if 60 <= i < 120:
            return 84.0 if i % 2 else 88.0  # hovering around the threshold: must not flap
        if 120 <= i < 130:
            return 70.0  # cleared for less than clear_for_s: still the same alert
        if 130 <= i < 140:
            return 86.0
        return 60.0

    events = run(eng, 200, temp_c=temp)
    rec = assert_one_cycle(events, "temperature", 20, 140)
    assert rec.severity is AlertSeverity.WARNING and rec.value == 90.0 and rec.threshold == 85.0
    assert "90.0 °C" in rec.message
    assert only(events, "anomaly") == []  # a threshold alert is not also an anomaly (the detector is warming up)


def test_a_short_excursion_does_not_open():
    eng = AlertEngine(AlertSettings())
    events = run(eng, 100, temp_c=lambda i: 95.0 if 10 <= i < 35 else 60.0)  # 25 s < for_s 30 s
    assert only(events, "temperature") == []


@pytest.mark.parametrize(("rule", "fields", "opened", "resolved"), [
    ("memory_full", {"mem_used_mb": lambda i: 79_000.0 if 10 <= i < 100 else 1000.0}, 10, 100),
    ("thermal_throttling", {"throttle_reasons": lambda i: ["sw_thermal"] if 10 <= i < 100 else []}, 10, 100),
    ("power_throttling", {"throttle_reasons": lambda i: ["hw_power_brake"] if 10 <= i < 100 else []}, 10, 100),
    ("power_at_limit", {"power_w": lambda i: 699.0 if 10 <= i < 400 else 300.0}, 10, 400),
    ("gpu_unhealthy", {"healthy": lambda i: not (10 <= i < 20)}, 10, 20),
    ("busy_without_job", {"util_gpu_pct": lambda i: 100.0 if 10 <= i < 400 else 0.0}, 10, 400),
])
def test_each_rule_opens_and_resolves_exactly_one_alert(rule, fields, opened, resolved):
    eng = AlertEngine(AlertSettings())
    events = run(eng, resolved + 200, **fields)
    assert_one_cycle(events, rule, opened, resolved)
    assert not eng.open_alerts()


def test_ecc_and_xid_are_critical_at_once_and_resolve_after_a_quiet_period():
    s = AlertSettings.model_validate({"rules": {"ecc_dbe": {"quiet_s": 60}, "xid": {"quiet_s": 30}}})
    eng = AlertEngine(s)
    events = run(eng, 300, ecc_dbe=lambda i: 7 if i < 50 else (8 if i < 70 else 9),  # 7 before: a baseline
                 xid_errors=lambda i: [79] if i in (100, 110) else ([13] if i == 200 else []))
    ecc = assert_one_cycle(events, "ecc_dbe", 50, 70 + 60)
    assert ecc.severity is AlertSeverity.CRITICAL
    xid = assert_one_cycle(events, "xid", 100, 110 + 30)
    assert xid.severity is AlertSeverity.CRITICAL and "79" in xid.message
    app = assert_one_cycle(events, "xid_app", 200, 230)
    assert app.severity is AlertSeverity.WARNING  # XID 13: the application's fault, the GPU stays placeable


def test_a_redelivered_sample_is_not_judged_twice_but_a_late_xid_counts():
    eng = AlertEngine(AlertSettings())
    run(eng, 10)
    late = sample("n1", T0 + timedelta(seconds=5), xid_errors=[79])
    eng.on_sample(late)
    assert [r.rule for e, r in eng.events] == ["xid"]
    eng.events.clear()
    eng.force_resolve(eng.open_alerts()[0], (T0 + timedelta(seconds=11)).timestamp())
    eng.events.clear()
    eng.on_sample(late)  # the same sample again: no new event
    assert eng.events == [] and eng.samples_out_of_order == 2


def test_anomaly_catches_a_drift_no_threshold_covers_and_resolves():
    s = AlertSettings.model_validate({"rules": {"anomaly": {"warmup_s": 300, "for_s": 20, "clear_for_s": 20}}})
    eng = AlertEngine(s)
    rng = random.Random(1)

    def temp(i: int) -> float:
        drift = 0.2 * (i - 600) if 600 <= i < 700 else 0.0  # +20 °C at most: 80 °C, under the 85 °C threshold
        return 60.0 + drift + rng.gauss(0, 0.3)

    events = run(eng, 900, temp_c=temp)
    mine = only(events, "anomaly")
    assert [e for e, _ in mine] == ["opened", "resolved"]
    rec = mine[0][1]
    assert rec.metric == "temp_c" and rec.severity is AlertSeverity.WARNING
    assert T0 + timedelta(seconds=600) < rec.opened_at < T0 + timedelta(seconds=680)
    assert rec.resolved_at >= T0 + timedelta(seconds=700)
    assert max(temp(i) for i in range(900)) < 85.0 and only(events, "temperature") == []


def test_anomaly_stays_quiet_when_jobs_start_and_stop():
    s = AlertSettings.model_validate({"rules": {"anomaly": {"warmup_s": 300, "for_s": 20}}})
    eng = AlertEngine(s)
    rng = random.Random(2)
    state = {"temp": 38.0}

    def util(i: int) -> float:
        return 95.0 if (i // 900) % 2 else 0.0  # a job every other 15 minutes

    def temp(i: int) -> float:
        target = 78.0 if util(i) else 38.0
        state["temp"] += (target - state["temp"]) * (1 - 2.718 ** (-1 / 25.0))  # 25 s thermal lag
        return state["temp"] + rng.gauss(0, 0.2)

    def power(i: int) -> float:
        return (640.0 if util(i) else 70.0) * (1 + rng.gauss(0, 0.01))

    events = run(eng, 4 * 3600, util_gpu_pct=util, temp_c=temp, power_w=power, sm_clock_mhz=lambda i: 1980.0)
    assert only(events, "anomaly") == []


def test_stale_gpu_and_silent_node_open_and_resolve_once():
    from orchestrator.cluster import Cluster

    s = AlertSettings.model_validate({"rules": {"telemetry_stale": {"gpu_after_s": 5, "node_after_s": 10,
                                                                    "clear_for_s": 2}}})
    eng = AlertEngine(s)
    cluster = Cluster()
    hb = Heartbeat(node="n1", time=T0, agent_version="t", interval_s=1.0,
                   gpus=[GpuInventory(uuid=f"GPU-n1-{i}", index=i, name="x") for i in range(2)])
    cluster.apply_heartbeat(hb)
    node = cluster.nodes["n1"]
    for i in range(2):
        cluster.apply_sample(sample("n1", T0, i), arrived_mono=0.0)

    @dataclass
    class Clock:
        now: float = 0.0
        events: list = field(default_factory=list)

    c = Clock()

    def tick(seconds: int, gpu0_fresh: bool, hb_fresh: bool = True) -> None:
        for _ in range(seconds):
            c.now += 1.0
            if hb_fresh:
                node.last_heartbeat_mono = c.now
            cluster.gpus["GPU-n1-1"].sample_mono = c.now
            if gpu0_fresh:
                cluster.gpus["GPU-n1-0"].sample_mono = c.now
            eng.check_stale(cluster, c.now, T0.timestamp() + c.now, started_mono=0.0)
            c.events += eng.events
            eng.events = []

    tick(10, gpu0_fresh=True)
    tick(20, gpu0_fresh=False)  # GPU 0 silent while its node heartbeats
    tick(20, gpu0_fresh=True)
    tick(30, gpu0_fresh=False, hb_fresh=False)  # the whole node silent: one node alert, not one per GPU
    tick(20, gpu0_fresh=True)
    stale = only(c.events, "telemetry_stale")
    assert [e for e, _ in stale] == ["opened", "resolved"] and stale[0][1].gpu_uuid == "GPU-n1-0"
    silent = only(c.events, "node_silent")
    assert [e for e, _ in silent] == ["opened", "resolved"]
    assert silent[0][1].severity is AlertSeverity.CRITICAL and silent[0][1].gpu_uuid is None


def test_an_alert_open_before_a_restart_is_adopted_not_reopened():
    eng = AlertEngine(AlertSettings())
    rec = AlertRecord(rule="temperature", severity=AlertSeverity.WARNING, node="n1", gpu_uuid="GPU-n1-0",
                      metric=None, value=90.0, threshold=85.0, message="hot", opened_at=T0, id=41)
    eng.adopt(rec, T0.timestamp())
    events = run(eng, 100, temp_c=lambda i: 90.0 if i < 50 else 60.0)
    assert [(e, r.id) for e, r in only(events, "temperature")] == [("resolved", 41)]


def test_the_cooling_tail_of_an_overheat_is_not_an_anomaly():
    s = AlertSettings.model_validate({"rules": {"anomaly": {"warmup_s": 300, "for_s": 10}}})
    eng = AlertEngine(s)
    rng = random.Random(4)
    state = {"temp": 60.0}

    def temp(i: int) -> float:
        target = 97.0 if 600 <= i < 700 else 60.0
        state["temp"] += (target - state["temp"]) * (1 - 2.718 ** (-1 / 25.0))  # heats and cools with 25 s lag
        return state["temp"] + rng.gauss(0, 0.2)

    events = run(eng, 1200, temp_c=temp)
    [(_, hot), _] = only(events, "temperature")
    # The detector may see the rise coming before 85 C (an early warning), but once the threshold alert holds the
    # episode the anomaly resolves, and the cooling tail after it is not reported again.
    anomalies = only(events, "anomaly")
    assert all(r.opened_at < hot.opened_at for _, r in anomalies)
    assert [e for e, _ in anomalies] in ([], ["opened", "resolved"])
    # Later, back to normal, the detector still catches a drift on its own.
    later = run(eng, 300, start=1200, temp_c=lambda i: 60.0 + (0.1 * (i - 1300) if i >= 1300 else 0.0))
    assert [e for e, _ in only(later, "anomaly")] == ["opened"]
