"""The placement model: an XGBoost regressor of log(attempt run time / max_duration_s) per (job, GPU) row.

Lower is better. A score in seconds is max_duration_s x exp(prediction): the predicted completion time.
Contributions (XGBoost `pred_contribs`, i.e. TreeSHAP) are in the same log space: a contribution of +0.1
means "this feature makes the job about 10 % slower here".
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb

from ai_core import features as F
from ai_core.errors import ModelInvalid

# Directions physics fixes: with everything else equal, a job cannot run faster on a busier, hotter, fuller GPU,
# nor slower where its model is resident. Constraining the trees to these shapes keeps a model trained on noisy
# outcomes from ranking candidates on spurious wiggles (it made the learned policy markedly more robust).
SLOWER_WITH = ("mem_used_frac", "mem_reserved_frac", "util_gpu", "util_mem", "combined_util", "temp_c", "power_frac",
               "throttled_thermal", "throttled_power", "jobs_running", "co_training", "co_inference", "co_batch",
               "co_interactive", "co_same_type", "temp_rise_per_kw")
FASTER_WITH = ("headroom_frac", "headroom_gb", "actual_headroom_frac", "temp_margin_c", "model_resident")
MONOTONE = "(" + ",".join("1" if f in SLOWER_WITH else "-1" if f in FASTER_WITH else "0" for f in F.FEATURES) + ")"

# eta 0.1 rather than 0.05: early stopping then keeps about a third of the trees (70 vs 240 on 30,000 rows) for
# under 1 % more validation error and the same placement quality (bench/placement_quality.py), and a decision
# scores every candidate, in time proportional to the number of trees.
XGB_PARAMS: dict[str, Any] = {
    "objective": "reg:squarederror",
    "eta": 0.1,
    "max_depth": 6,
    "min_child_weight": 20,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "lambda": 1.0,
    "tree_method": "hist",
    "max_bin": 256,
    "monotone_constraints": MONOTONE,
}
MAX_ROUNDS = 800
EARLY_STOPPING = 40


@dataclass
class PlacementModel:
    booster: xgb.Booster
    version: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.booster.num_features()
        if n != len(F.FEATURES) or self.meta.get("feature_schema", F.FEATURE_SCHEMA) != F.FEATURE_SCHEMA:
            raise ModelInvalid(f"model {self.version} was trained on another feature layout "
                               f"({n} features, schema {self.meta.get('feature_schema')!r}); retrain it")
        self.booster.feature_names = list(F.FEATURES)

    def set_threads(self, n: int) -> None:
        self.booster.set_param({"nthread": max(1, int(n))})

    def predict_log(self, x: np.ndarray) -> np.ndarray:
        """Predicted log(run time / max_duration_s), one per row; thread-safe, no DMatrix copy."""
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.booster.inplace_predict(x, validate_features=False), dtype=np.float32)

    def contributions(self, x: np.ndarray, *, exact: bool = False) -> np.ndarray:
        """Per-feature contributions (XGBoost `pred_contribs`), shape (rows, features + 1); the last column is
        the bias. exact=True: TreeSHAP (about 2 ms a row for a 150-tree model); default: Saabas attribution
        (`approx_contribs`, the path-walk along each tree, ~50x cheaper), which keeps /v1/place within budget."""
        # Two rows: one thread; more would only wait on each other (and on a busy host, much longer).
        # No feature names: setting them validates the list (a noticeable share of a two-row call), and the
        # booster's own names are not checked against them here anyway (validate_features=False).
        dm = xgb.DMatrix(x, missing=math.nan, nthread=1)
        return np.asarray(self.booster.predict(dm, pred_contribs=True, approx_contribs=not exact,
                                               validate_features=False))

    @classmethod
    def load(cls, model_path: os.PathLike | str, version: str, meta: dict[str, Any]) -> PlacementModel:
        booster = xgb.Booster()
        try:
            booster.load_model(str(model_path))
        except xgb.core.XGBoostError as exc:
            raise ModelInvalid(f"cannot load model {version} from {model_path}: {exc}") from exc
        return cls(booster, version, meta)


def fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, seed: int = 0, max_rounds: int = MAX_ROUNDS,
        valid_frac: float = 0.15, params: dict[str, Any] | None = None,
        threads: int | None = None) -> tuple[xgb.Booster, dict[str, Any]]:
    """Train on (x, y); the validation set is whole groups (simulated episodes / days of records), so the
    reported error is on situations the model has not seen. Returns the booster and training metrics."""
    if len(x) < 50:
        raise ValueError(f"{len(x)} training rows are too few (need at least 50)")
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    n_valid = max(1, int(round(len(uniq) * valid_frac))) if len(uniq) > 1 else 0
    valid_groups = set(rng.choice(uniq, size=n_valid, replace=False).tolist()) if n_valid else set()
    vmask = np.isin(groups, list(valid_groups)) if valid_groups else np.zeros(len(x), bool)
    if vmask.all() or not vmask.any():  # one group only: fall back to a row split
        vmask = rng.random(len(x)) < valid_frac
    p = {**XGB_PARAMS, **(params or {}), "seed": seed, "nthread": threads or os.cpu_count() or 1}
    dtrain = xgb.DMatrix(x[~vmask], label=y[~vmask], feature_names=list(F.FEATURES), missing=math.nan)
    dvalid = xgb.DMatrix(x[vmask], label=y[vmask], feature_names=list(F.FEATURES), missing=math.nan)
    t0 = time.perf_counter()
    booster = xgb.train(p, dtrain, num_boost_round=max_rounds, evals=[(dvalid, "valid")],
                        early_stopping_rounds=EARLY_STOPPING, verbose_eval=False)
    # Keep only the trees up to the best validation round: smaller and faster to serve.
    best = int(getattr(booster, "best_iteration", max_rounds - 1)) + 1
    booster = booster[:best]
    elapsed = time.perf_counter() - t0
    pred_v = booster.inplace_predict(x[vmask]) if vmask.any() else np.zeros(0)
    pred_t = booster.inplace_predict(x[~vmask])
    yv, yt = y[vmask], y[~vmask]

    def r2(yy: np.ndarray, pp: np.ndarray) -> float:
        var = float(np.var(yy))
        return float(1.0 - np.mean((yy - pp) ** 2) / var) if var > 0 else math.nan

    metrics = {
        "train_rows": int((~vmask).sum()), "valid_rows": int(vmask.sum()), "rounds": best,
        "train_seconds": round(elapsed, 2),
        "train_rmse_log": float(np.sqrt(np.mean((yt - pred_t) ** 2))),
        "valid_rmse_log": float(np.sqrt(np.mean((yv - pred_v) ** 2))) if len(yv) else math.nan,
        "valid_mae_log": float(np.mean(np.abs(yv - pred_v))) if len(yv) else math.nan,
        "valid_r2": r2(yv, pred_v) if len(yv) else math.nan,
        "params": {k: v for k, v in p.items() if k != "nthread"},
    }
    return booster, metrics
