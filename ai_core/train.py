"""Train a placement model: `python -m ai_core.train --synthetic N [--seed S]` and/or `--from-db`.

Writes a new version into the registry (and makes it the active one unless --no-activate), inserts its
`model_versions` row when a database URL is known, and announces it on `aether.model.updated` so running
AI cores load it without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from ai_core import dataset as D
from ai_core.model import PlacementModel, fit
from ai_core.registry import Registry
from ai_core.settings import AiCoreSettings
from services import bus, jsonlog, subjects
from services.schemas.placement import ModelUpdated

log = logging.getLogger("aether.ai_core.train")

MIN_DB_ROWS = 200


def quick_check(model: PlacementModel, seed: int, *, n_jobs: int = 500, n_gpus: int = 32) -> dict[str, float]:
    """Mean JCT of the model against least-utilised on a small held-out trace in a perturbed world: a sanity
    check recorded with the version, not the evaluation (bench/placement_quality.py is)."""
    from ai_core.policies import make_policy
    from ai_core.scoring import ModelPolicy
    from ai_core.simulator import ClusterSim, SimParams
    from ai_core.traces import synthetic_trace

    eval_seed = D.EVAL_SEED_BASE + 500 + seed % 1000
    world = SimParams().perturbed(eval_seed, 0.2)
    trace = synthetic_trace(n_jobs, n_gpus, load=0.8, seed=eval_seed)
    out = {}
    for name, policy in (("least_utilised", make_policy("least_utilised", n_gpus=n_gpus)),
                         ("xgboost", ModelPolicy(model))):
        out[name] = ClusterSim(trace, policy, n_gpus=n_gpus, params=world, seed=eval_seed).run().mean_jct_s
    return {"check_mean_jct_s_least_utilised": round(out["least_utilised"], 1),
            "check_mean_jct_s_xgboost": round(out["xgboost"], 1),
            "check_jct_gain_vs_least_utilised_pct": round(100.0 * (1 - out["xgboost"] / out["least_utilised"]), 2)}


def build_dataset(args: argparse.Namespace, dsn: str | None) -> tuple[D.Dataset, dict[str, Any]]:
    parts: list[D.Dataset] = []
    info: dict[str, Any] = {}
    if args.synthetic:
        t0 = time.perf_counter()

        def progress(rows: int, episodes: int) -> None:
            log.info("simulating", extra={"rows": rows, "target_rows": args.synthetic, "episodes": episodes})

        ds = D.synthetic(args.synthetic, seed=args.seed, progress=progress)
        for r in range(args.guided_rounds):
            # Let the model so far steer half the decisions, so the data covers the states it leads to.
            booster, _ = fit(ds.x, ds.y, ds.groups, seed=args.seed)
            guide = PlacementModel(booster, f"guide-{r}", {})
            from ai_core.scoring import ModelPolicy
            more = D.synthetic(max(1, args.synthetic // 2), seed=args.seed * 1000 + 17 + r, guide=ModelPolicy(guide),
                               progress=progress)
            ds = D.Dataset.concat([ds, more])
        info.update(ds.info)
        info["synthetic_rows"] = len(ds)
        info["synthetic_seconds"] = round(time.perf_counter() - t0, 1)
        info["guided_rounds"] = args.guided_rounds
        parts.append(ds)
    if args.from_db:
        if not dsn:
            raise SystemExit("--from-db needs a database: set DATABASE_URL or give --database-url")
        from ai_core.outcomes import load_outcomes
        db, skipped = asyncio.run(load_outcomes(dsn, days=args.days))
        info.update({"db_rows": len(db), "db_records_skipped": skipped, "db_days": args.days})
        if len(db) < args.min_db_rows and not args.synthetic:
            raise SystemExit(f"only {len(db)} recorded outcome rows (need {args.min_db_rows}); add --synthetic N "
                             "or wait for more jobs to finish")
        if len(db):
            parts.append(db)
    return D.finite(D.Dataset.concat(parts)), info


async def announce(settings: AiCoreSettings, meta: dict[str, Any]) -> bool:
    try:
        nc = await asyncio.wait_for(bus.connect(settings.nats_url, name="aether-ai-core-train", user=settings.nats_user,
                                                password=settings.nats_password, connect_timeout=2.0), 5.0)
    except Exception as exc:  # an unreachable bus only delays pick-up to the AI cores' next start
        log.warning("model not announced: NATS unreachable (AI cores load it at their next start)",
                    extra={"url": settings.nats_url, "error": repr(exc)})
        return False
    try:
        metrics = {k: v for k, v in meta.get("metrics", {}).items() if isinstance(v, int | float | str)}
        msg = ModelUpdated(version=meta["version"], time=datetime.now(UTC), metrics=metrics, source=meta["source"])
        await nc.publish(subjects.MODEL_UPDATED, msg.to_bytes())
        await nc.flush(timeout=5)
        return True
    finally:
        await nc.close()


def main(argv: list[str] | None = None, *, configure_logging: bool = True) -> int:
    parser = argparse.ArgumentParser(prog="python -m ai_core.train", description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, metavar="N", help="at least N rows from the cluster simulator")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic episodes (default 0)")
    parser.add_argument("--from-db", action="store_true", help="add recorded outcomes (placements + jobs tables)")
    parser.add_argument("--database-url", help="defaults to DATABASE_URL / settings")
    parser.add_argument("--days", type=int, default=90, help="recorded outcomes of the last DAYS days (default 90)")
    parser.add_argument("--min-db-rows", type=int, default=MIN_DB_ROWS)
    parser.add_argument("--model-dir", type=Path, help="defaults to AI_CORE_MODEL_DIR / <repo>/.aether/models")
    parser.add_argument("--guided-rounds", type=int, default=1,
                        help="rounds where the model so far steers half of extra simulated decisions (default 1)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="record a quick held-out comparison with least-utilised (default on)")
    parser.add_argument("--activate", action=argparse.BooleanOptionalAction, default=True,
                        help="make the new version the active one (default on)")
    parser.add_argument("--notify", action=argparse.BooleanOptionalAction, default=True,
                        help="announce the version on aether.model.updated (default on)")
    args = parser.parse_args(argv)
    if not args.synthetic and not args.from_db:
        parser.error("give --synthetic N and/or --from-db")
    if args.synthetic is not None and args.synthetic < 100:
        parser.error("--synthetic needs at least 100 rows")
    if D.is_eval_seed(args.seed):
        parser.error(f"seeds from {D.EVAL_SEED_BASE} up are reserved for evaluation")
    overrides = {"model_dir": args.model_dir} if args.model_dir else {}
    settings = AiCoreSettings.load(**overrides)
    if configure_logging:
        jsonlog.configure("ai_core.train", settings.log_level)
    dsn = args.database_url or settings.database_url

    t0 = time.perf_counter()
    ds, info = build_dataset(args, dsn)
    if len(ds) < 50:
        print(f"not enough training rows ({len(ds)})", file=sys.stderr)
        return 1
    booster, metrics = fit(ds.x, ds.y, ds.groups, seed=args.seed)
    source = "+".join(s for s, on in (("synthetic", bool(args.synthetic)), ("db", bool(info.get("db_rows"))))
                      if on)
    meta: dict[str, Any] = {"source": source, "rows": len(ds), "metrics": {k: v for k, v in metrics.items()
                                                                           if k != "params"},
                            "params": metrics["params"], "training": info, "xgboost": xgb.__version__,
                            "mean_target": float(np.mean(ds.y)), "created_at": datetime.now(UTC).isoformat()}
    if args.check:
        meta["metrics"].update(quick_check(PlacementModel(booster, "candidate", {}), args.seed))
    registry = Registry(settings.model_dir)
    version = registry.save(booster, meta, activate=args.activate)
    meta = registry.meta(version)
    if dsn:
        from ai_core.outcomes import store_version
        try:
            asyncio.run(store_version(dsn, meta, str(registry.path(version)), activated=args.activate))
        except Exception as exc:  # the model file is the artefact; the row is bookkeeping
            log.warning("model_versions row not written", extra={"version": version, "error": repr(exc)})
    announced = asyncio.run(announce(settings, meta)) if args.notify and args.activate else False
    summary = {"version": version, "source": source, "rows": len(ds), "announced": announced,
               "seconds": round(time.perf_counter() - t0, 1), **meta["metrics"]}
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
