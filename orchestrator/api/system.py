"""Health, Prometheus metrics, nodes and GPUs."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from orchestrator.auth import Principal, require
from orchestrator.errors import GpuNotFound
from orchestrator.migrate import storage_flavour
from orchestrator.runtime import DB_DOWN_ERRORS
from services import __version__
from services.metrics import metrics_response

router = APIRouter()


@router.get("/health")
async def liveness(request: Request) -> dict:
    """Liveness: the process answers. Dependencies are in /v1/health."""
    return {"status": "ok", "service": "orchestrator", "version": __version__}


@router.get("/v1/health")
async def health(request: Request) -> dict:
    rt = request.app.state.rt
    nats_ok = rt.nc.is_connected
    db: dict = {"ok": False, "storage": rt.storage}
    if rt.db_ready.is_set():
        try:
            async with asyncio.timeout(2):
                async with rt.db() as conn:
                    await conn.fetchval("SELECT 1")
                    db = {"ok": True, "storage": await storage_flavour(conn)}
        except (*DB_DOWN_ERRORS, TimeoutError) as exc:
            db = {"ok": False, "storage": rt.storage, "error": exc.__class__.__name__}
    else:
        db["error"] = "not connected yet"
    ai: dict = {"ok": False, "url": rt.settings.ai_core_url}
    try:
        r = await rt.http.get(f"{rt.settings.ai_core_url}/health", timeout=1.0)
        ai = {"ok": r.status_code == 200, "url": rt.settings.ai_core_url, **_json_or_empty(r)}
    except Exception as exc:
        ai["error"] = exc.__class__.__name__
    status = "ok" if nats_ok and db["ok"] else "degraded"
    return {
        "status": status,
        "version": __version__,
        "nats": {"ok": nats_ok, "url": rt.nc.connected_url.geturl() if rt.nc.connected_url else None},
        "database": db,
        "timescaledb": db.get("storage") == "timescaledb",
        "ai_core": ai,
        "nodes": len(rt.cluster.nodes),
        "gpus": len(rt.cluster.gpus),
    }


def _json_or_empty(r) -> dict:
    try:
        body = r.json()
        return {"model_version": body.get("model_version")} if isinstance(body, dict) else {}
    except ValueError:
        return {}


@router.get("/metrics")
async def metrics(request: Request):
    rt = request.app.state.rt
    response = metrics_response(rt.metrics.registry)
    # Components that render exposition text themselves (the per-GPU DCGM gauges: too many samples for
    # prometheus_client's formatter) list an async callable returning bytes in rt.components["metrics_text"].
    extra = [await fn() for fn in rt.components.get("metrics_text", [])]
    if extra:
        response.body = response.body + b"".join(extra)
        response.headers["content-length"] = str(len(response.body))
    return response


@router.get("/v1/gpus")
async def list_gpus(request: Request, _: Principal = Depends(require("viewer"))) -> list[dict]:
    return request.app.state.rt.cluster.gpu_views()


@router.get("/v1/gpus/{uuid}")
async def get_gpu(uuid: str, request: Request, _: Principal = Depends(require("viewer"))) -> dict:
    cluster = request.app.state.rt.cluster
    gpu = cluster.gpus.get(uuid)
    if gpu is None:
        raise GpuNotFound(f"no GPU {uuid!r}")
    return cluster.gpu_view(gpu)


@router.get("/v1/nodes")
async def list_nodes(request: Request, _: Principal = Depends(require("viewer"))) -> list[dict]:
    return request.app.state.rt.cluster.node_views()
