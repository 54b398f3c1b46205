"""Live state over a WebSocket: a snapshot first, then diffs; GPU changes coalesced every push interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from orchestrator.errors import OrchestratorError
from orchestrator.runtime import Runtime

log = logging.getLogger("aether.ws")
router = APIRouter()


@router.websocket("/v1/ws")
async def live(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.rt
    # Browsers cannot set headers on a WebSocket: the token comes as a query parameter.
    try:
        principal = rt.auth.identify(ws.query_params.get("token"))
    except OrchestratorError as exc:
        await ws.close(code=4401, reason=exc.code)
        return
    await ws.accept()
    client = rt.hub.connect()
    rt.metrics.ws_clients.inc()
    client.principal = principal
    try:
        await ws.send_bytes(orjson.dumps(await rt.hub.snapshot(), default=str))
        receiver = asyncio.create_task(_receive(ws, client))
        try:
            while True:
                data = await client.queue.get()
                if data is None:  # dropped for falling behind: close so the browser reconnects and resyncs
                    rt.metrics.ws_dropped.inc()
                    await ws.close(code=4408, reason="too slow, reconnect")
                    return
                await ws.send_bytes(data)
        finally:
            receiver.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        rt.hub.disconnect(client)
        rt.metrics.ws_clients.dec()


async def _receive(ws: WebSocket, client) -> None:
    """Clients may subscribe to topics (e.g. {"subscribe": "job:<id>"} for one job's logs)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            text = await ws.receive_text()
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(msg, dict):
                if isinstance(msg.get("subscribe"), str):
                    client.topics.add(msg["subscribe"][:200])
                if isinstance(msg.get("unsubscribe"), str):
                    client.topics.discard(msg["unsubscribe"])


async def pusher(rt: Runtime) -> None:
    """Every push interval, send the GPUs whose samples changed, as one message serialised once."""
    while True:
        await asyncio.sleep(rt.settings.ws_push_interval_s)
        changed: set[str] = rt.components.setdefault("changed_gpus", set())
        if not changed:
            continue
        uuids = list(changed)
        changed.clear()
        if not rt.hub.clients:
            continue
        views = [rt.cluster.gpu_view(rt.cluster.gpus[u]) for u in uuids if u in rt.cluster.gpus]
        rt.hub.publish({"type": "gpus", "gpus": views})


async def start(rt: Runtime) -> None:
    async def gpus_part():
        return rt.cluster.gpu_views()

    async def nodes_part():
        return rt.cluster.node_views()

    rt.hub.snapshot_parts["gpus"] = gpus_part
    rt.hub.snapshot_parts["nodes"] = nodes_part
    rt.spawn(pusher(rt), "ws-pusher")
