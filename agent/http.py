"""The agent's HTTP endpoint: `/health` (JSON, 503 when sampling has stalled) and `/metrics` (Prometheus).
Plain Starlette: two routes do not need FastAPI's start-up cost on every node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.metrics import AgentMetrics
from services.metrics import metrics_response


def create_app(health: Callable[[], dict[str, Any]], metrics: AgentMetrics) -> Starlette:
    async def _health(_: Request) -> JSONResponse:
        body = health()
        return JSONResponse(body, status_code=503 if body["status"] == "failing" else 200)

    async def _metrics(_: Request) -> Response:
        return metrics_response(metrics.registry)

    return Starlette(routes=[Route("/health", _health), Route("/metrics", _metrics)])
