"""EWMA z-score anomaly detector for one GPU: per metric, a fast EWMA of the value compared with a slow baseline
(mean, variance) learned separately for each utilisation band, with time-aware smoothing for any interval."""

from __future__ import annotations

import math

from orchestrator.alerts.config import AnomalyRule

LN2 = math.log(2.0)
MAX_LEARN_DT_S = 10.0  # one sample never weighs more than 10 s of learning, however long the gap before it


class Baseline:
    __slots__ = ("learned_s", "mean", "var")

    def __init__(self, x: float) -> None:
        self.mean = x
        self.var = 0.0
        self.learned_s = 0.0

    def learn(self, x: float, alpha: float, dt: float) -> None:
        # Exponentially weighted mean and variance (West 1979 form), stable for any alpha in (0, 1].
        diff = x - self.mean
        incr = alpha * diff
        self.mean += incr
        self.var = (1.0 - alpha) * (self.var + diff * incr)
        self.learned_s += dt


class _Alpha:
    """1 - exp(-dt / tau), remembered for the last dt: agents sample at a constant interval."""

    __slots__ = ("a", "dt", "tau")

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.dt = -1.0
        self.a = 0.0

    def __call__(self, dt: float) -> float:
        if dt != self.dt:
            self.dt = dt
            self.a = 1.0 - math.exp(-dt / self.tau)
        return self.a


class DetectorParams:
    """The rule's settings turned into what the hot path needs, once."""

    def __init__(self, rule: AnomalyRule) -> None:
        self.fast_alpha = _Alpha(rule.fast_halflife_s / LN2)
        self.base_alpha = _Alpha(rule.baseline_halflife_s / LN2)
        self.warmup_s = rule.warmup_s
        self.settle_s = rule.settle_s
        self.edges = [0.0, *rule.util_bands, math.inf]
        self.band_margin = rule.band_margin_pct
        self.min_std_rel = rule.min_std_rel
        self.z_open = rule.z_open
        self.metrics = [(m, d, rule.min_std.get(m, 0.0)) for m, d in rule.metrics.items()]

    def band_of(self, util: float) -> int:
        for i in range(1, len(self.edges)):
            if util < self.edges[i]:
                return i - 1
        return len(self.edges) - 2

    def band_label(self, band: int) -> str:
        hi = self.edges[band + 1]
        return f"{self.edges[band]:g}-{100.0 if math.isinf(hi) else hi:g} %"


class MetricDetector:
    __slots__ = ("baselines", "covered_since", "direction", "fast", "floor", "last_z", "metric")

    def __init__(self, metric: str, direction: str, floor: float) -> None:
        self.metric = metric
        self.direction = direction
        self.floor = floor
        self.fast: float | None = None
        self.last_z: float | None = None
        self.baselines: dict[int, Baseline] = {}
        # Set while a threshold rule on this metric reports the episode, until the metric is back to normal.
        self.covered_since: float | None = None

    def reset(self) -> None:
        """Forget what was learned (an anomaly that lasted long enough is the new normal)."""
        self.baselines.clear()
        self.fast = None
        self.last_z = None


class GpuAnomaly:
    """The detectors of one GPU and the load band they judge in. `begin(t, util)` once per sample, then
    `score(detector, x, may_learn)` per metric: the signed z-score ("high": positive when above the baseline,
    "low": positive when below, "both": absolute), or None while learning or settling."""

    __slots__ = ("band", "detectors", "dt", "hi", "last_t", "lo", "settle_until", "settling")

    def __init__(self) -> None:
        self.band = -1
        self.lo = self.hi = 0.0
        self.settle_until = 0.0
        self.settling = True
        self.last_t: float | None = None
        self.dt = 0.0
        self.detectors: dict[str, MetricDetector] = {}

    def begin(self, t: float, util: float | None, p: DetectorParams) -> None:
        last = self.last_t
        self.last_t = t
        self.dt = 0.0 if last is None else t - last
        restart = False
        if util is not None and not (self.lo - p.band_margin <= util < self.hi + p.band_margin and self.band >= 0):
            # Hysteresis: leave a band only when clearly outside it, so util hovering at an edge keeps judging.
            self.band = p.band_of(util)
            self.lo, self.hi = p.edges[self.band], p.edges[self.band + 1]
            restart = True
        elif last is not None and self.dt > p.settle_s:
            restart = True  # a long silence (reboot, driver reload): settle again before judging
        if restart:
            self.settle_until = t + p.settle_s
            for d in self.detectors.values():
                d.fast = None
        self.settling = t < self.settle_until

    def score(self, d: MetricDetector, x: float, p: DetectorParams, may_learn: bool) -> float | None:
        dt = self.dt
        if d.fast is None or dt <= 0.0:
            d.fast = x
        else:
            d.fast += (x - d.fast) * p.fast_alpha(dt)
        if self.settling:
            d.last_z = None
            return None
        b = d.baselines.get(self.band)
        if b is None:
            d.baselines[self.band] = Baseline(x)
            d.last_z = None
            return None
        learn_dt = dt if dt < MAX_LEARN_DT_S else MAX_LEARN_DT_S
        if b.learned_s < p.warmup_s:
            if learn_dt > 0:
                b.learn(x, p.base_alpha(learn_dt), learn_dt)
            d.last_z = None
            return None
        std = math.sqrt(b.var) if b.var > 0.0 else 0.0
        floor = abs(b.mean) * p.min_std_rel
        if d.floor > floor:
            floor = d.floor
        if std < floor:
            std = floor
        z = (d.fast - b.mean) / std
        if d.direction == "low":
            z = -z
        elif d.direction == "both":
            z = abs(z)
        # Learn only from normal samples: a baseline that absorbed the anomaly would hide it.
        if may_learn and z < p.z_open and learn_dt > 0:
            b.learn(x, p.base_alpha(learn_dt), learn_dt)
        d.last_z = z
        return z
