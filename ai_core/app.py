"""The AI core's HTTP API: POST /v1/place, GET /v1/model, GET /health, GET /metrics."""

from __future__ import annotations

import gc
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ai_core import scoring
from ai_core.errors import InvalidPlacementRequest, NoFeasibleCandidate, NoModel, PayloadTooLarge
from ai_core.features import table_from_candidates
from ai_core.metrics import AiCoreMetrics
from ai_core.registry import Registry
from ai_core.reload import ModelHolder, ModelUpdates
from ai_core.settings import AiCoreSettings
from services.http import install_error_handlers
from services.metrics import metrics_response
from services.schemas.placement import PlacementDecision, PlacementRequest

log = logging.getLogger("aether.ai_core")


def _invalid(exc: ValidationError) -> InvalidPlacementRequest:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    return InvalidPlacementRequest(
        f"{field or 'request'}: {first.get('msg')}", field=field,
        details={"errors": [{"field": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg")}
                            for e in errors[:20]]})


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit} byte limit")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: AiCoreSettings | None = None) -> FastAPI:
    settings = settings or AiCoreSettings.load()
    metrics = AiCoreMetrics()
    registry = Registry(settings.model_dir)
    holder = ModelHolder(registry, metrics, threads=settings.predict_threads)
    updates = ModelUpdates(holder, metrics, url=settings.nats_url, user=settings.nats_user,
                           password=settings.nats_password) if settings.nats_enabled else None
    started = time.time()
    limit = int(settings.max_body_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        metrics.served(None)
        await holder.load(reason="start-up")
        if updates is not None:
            updates.start()
        # Everything alive now (modules, the app, the model) lives as long as the process: move it out of the
        # collector's sight, so a full collection triggered by a large request walks only what requests made,
        # not the whole heap (tens of ms, landing in whichever decision triggered it).
        gc.collect()
        gc.freeze()
        log.info("ai core ready", extra={"model_version": holder.model.version if holder.model else None,
                                         "model_dir": str(settings.model_dir)})
        yield
        if updates is not None:
            await updates.stop()

    app = FastAPI(title="Aether AI core", version="1", lifespan=lifespan,
                  description="Scores candidate GPUs for a job with XGBoost and explains the choice.")
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.updates = updates
    install_error_handlers(app)

    def decide(body: bytes) -> PlacementDecision:
        # Runs in a worker thread: parsing thousands of candidates and scoring them is CPU work.
        t0 = time.perf_counter()
        req = scoring.parse_fast(body)
        if req is None:  # not plainly valid: the models coerce it or say exactly what is wrong
            try:
                full = PlacementRequest.model_validate_json(body)
            except ValidationError as exc:
                raise _invalid(exc) from None
            req = scoring.Parsed(full.job_id, full.job, table_from_candidates(full.candidates), full.explain)
        metrics.candidates.observe(len(req.table))
        return scoring.decide(req, holder.model, top_n=settings.top_contributions,
                              exact_contributions=settings.exact_contributions, t0=t0)

    @app.post("/v1/place", response_model=PlacementDecision, tags=["placement"],
              responses={413: {"description": "PAYLOAD_TOO_LARGE"}, 422: {"description": "INVALID_REQUEST"},
                         503: {"description": "NO_MODEL (no model loaded) or RESOURCE_EXHAUSTED (nothing fits)"}})
    async def place(request: Request) -> Response:
        """Choose the GPU(s) for a job among the candidates. Scores are decision costs in seconds, lower is better:
        predicted completion time, plus the delay predicted for jobs already on the GPU (see ai_core/README.md)."""
        t0 = time.perf_counter()
        outcome = "error"
        try:
            body = await _read_body(request, limit)
            decision = await run_in_threadpool(decide, body)
            outcome = "ok"
            return Response(decision.model_dump_json(), media_type="application/json")
        except NoModel:
            outcome = "no_model"
            raise
        except NoFeasibleCandidate:
            outcome = "no_feasible"
            raise
        except InvalidPlacementRequest:
            outcome = "invalid"
            raise
        except PayloadTooLarge:
            outcome = "too_large"
            raise
        finally:
            metrics.decisions.labels(outcome=outcome).inc()
            if outcome == "ok":
                metrics.decision_seconds.observe(time.perf_counter() - t0)

    @app.get("/v1/model", tags=["model"])
    async def model_info() -> dict[str, Any]:
        """The model being served: version, when it was trained and loaded, its training metrics."""
        return holder.describe()

    @app.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        nats = "disabled" if updates is None else ("connected" if updates.connected else "disconnected")
        body = {"status": "ok" if holder.model is not None else "degraded", "service": "ai_core",
                "model_loaded": holder.model is not None,
                "model_version": holder.model.version if holder.model else None, "nats": nats,
                "uptime_s": round(time.time() - started, 1)}
        return JSONResponse(body)

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return metrics_response(metrics.registry)

    def openapi() -> dict[str, Any]:
        # /v1/place reads its body itself (to parse it off the event loop); describe that body here.
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        body = PlacementRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, sub in body.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps["PlacementRequest"] = body
        schema["paths"]["/v1/place"]["post"]["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PlacementRequest"}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

