"""Live state over a WebSocket: a snapshot first, then diffs; GPU changes coalesced every push interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

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
        await ws.send_bytes(orjson.dumps(await rt.hub.snapshot(principal), default=str))
        receiver = asyncio.create_task(_receive(rt, ws, client))
        try:
            while True:
                data = await client.queue.get()
                if data is None:  # dropped for falling behind: close so the browser reconnects and resyncs
                    rt.metrics.ws_dropped.inc()
                    await _close_quickly(ws)
                    return
                # A client that stops reading fills the socket buffer and blocks this send; race it against
                # the hub's drop and a timeout, or the handler would hold the socket long after the drop.
                send = asyncio.ensure_future(ws.send_bytes(data))
                dropped = asyncio.ensure_future(client.dropped_event.wait())
                done, _ = await asyncio.wait({send, dropped}, timeout=SEND_TIMEOUT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                dropped.cancel()
                if send not in done:
                    send.cancel()
                    rt.hub.disconnect(client)
                    rt.metrics.ws_dropped.inc()
                    log.warning("websocket client stopped reading; closed")
                    await _close_quickly(ws)
                    return
                send.result()  # re-raise a disconnect
        finally:
            receiver.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        rt.hub.disconnect(client)
        rt.metrics.ws_clients.dec()


async def _close_quickly(ws: WebSocket) -> None:
    """Close with 4408; if even the close frame cannot be sent, give up on the socket."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=4408, reason="too slow, reconnect"), 1.0)


async def _receive(rt: Runtime, ws: WebSocket, client) -> None:
    """Clients may subscribe to topics (e.g. {"subscribe": "job:<id>"} for one job's logs)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            text = await ws.receive_text()
            try:
                msg = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(msg, dict):
                topic = msg.get("subscribe")
                if isinstance(topic, str) and len(topic) <= MAX_TOPIC_LEN and await _may_follow(rt, client, topic):
                    client.topics.add(topic)
                if isinstance(msg.get("unsubscribe"), str):
                    client.topics.discard(msg["unsubscribe"])


async def _may_follow(rt: Runtime, client, topic: str) -> bool:
    """A tenant-scoped token follows only its own tenant's jobs; a job it may not see is refused exactly like one
    that does not exist (silently), as the HTTP API answers 404 for both."""
    if not topic.startswith("job:") or client.principal is None or client.principal.tenant is None:
        return True
    try:
        async with rt.db() as conn:
            tenant = await conn.fetchval("SELECT tenant FROM jobs WHERE id = $1", topic[4:])
    except Exception as exc:  # database away: refuse rather than leak
        log.warning("websocket subscription not checked; refused", extra={"error": repr(exc)})
        return False
    return tenant is not None and client.principal.sees_tenant(tenant)


# Sample fields a diff leaves out: the GPU's identity is already in the view around it.
_SAMPLE_IDENTITY = frozenset({"v", "node", "gpu_uuid", "gpu_index", "name"})
MAX_TOPIC_LEN = 200
SEND_TIMEOUT_S = 5.0  # a send blocked this long means the client stopped reading
PING_AFTER_S = 15.0  # an idle link still says something, so a browser can tell "quiet" from "dead"
NODES_EVERY_S = 2.0  # heartbeats are not diffs of their own; nodes' last-heartbeat times go out this often


def slim_view(view: dict[str, Any]) -> dict[str, Any]:
    """A GPU view for a diff: the sample without its identity fields and without null readings (about half
    the bytes; at 1,000 GPUs x 100 clients the bytes are what the orchestrator spends its time on)."""
    sample = view.get("sample")
    if sample:
        view["sample"] = {k: v for k, v in sample.items() if v is not None and k not in _SAMPLE_IDENTITY}
    return view


async def pusher(rt: Runtime) -> None:
    """Every push interval, send the GPUs whose samples changed, as one message serialised once."""
    last_sent = last_nodes = time.monotonic()
    while True:
        await asyncio.sleep(rt.settings.ws_push_interval_s)
        if rt.hub.clients and rt.cluster.nodes and time.monotonic() - last_nodes > NODES_EVERY_S:
            rt.hub.publish({"type": "nodes", "nodes": rt.cluster.node_views()})
            last_nodes = last_sent = time.monotonic()
        changed: set[str] = rt.components.setdefault("changed_gpus", set())
        if not changed:
            if rt.hub.clients and time.monotonic() - last_sent > PING_AFTER_S:
                rt.hub.publish({"type": "ping", "now": time.time()})
                last_sent = time.monotonic()
            continue
        uuids = list(changed)
        changed.clear()
        if not rt.hub.clients:
            continue
        views = [slim_view(rt.cluster.gpu_view(rt.cluster.gpus[u])) for u in uuids if u in rt.cluster.gpus]
        # `t`: when this push left, so a client can tell the path's parts (ingest vs. delivery and drawing).
        rt.hub.publish({"type": "gpus", "t": time.time(), "gpus": views})
        last_sent = time.monotonic()


class SerialisedOnce:
    """A snapshot part built and serialised at most once per `max_age_s`, however many clients connect: at 1,000
    GPUs the list is ~1 MB of JSON, and a hundred dashboards reconnecting after a restart would otherwise rebuild it
    a hundred times on the event loop. Only for parts that diffs refresh within that age (GPU samples, nodes)."""

    def __init__(self, build, max_age_s: float) -> None:
        self.build = build
        self.max_age_s = max_age_s
        self.data: orjson.Fragment | None = None
        self.at = 0.0

    def get(self) -> orjson.Fragment:
        now = time.monotonic()
        if self.data is None or now - self.at > self.max_age_s:
            self.data = orjson.Fragment(orjson.dumps(self.build(), default=str))
            self.at = now
        return self.data


async def start(rt: Runtime) -> None:
    # A GPU's view is re-sent with each of its samples, so a snapshot part up to a second old heals by itself.
    gpus_cache = SerialisedOnce(rt.cluster.gpu_views, max_age_s=1.0)

    async def gpus_part():
        return gpus_cache.get()

    async def nodes_part():
        return rt.cluster.node_views()

    async def meta_part():
        # The server's clock lets the page tell a sample's age even when the browser's clock is off.
        return {"now": time.time(), "stale_after_s": rt.settings.sample_stale_s,
                "push_interval_s": rt.settings.ws_push_interval_s,
                "heartbeat_timeout_s": rt.settings.heartbeat_timeout_s}

    rt.hub.snapshot_parts["meta"] = meta_part
    rt.hub.snapshot_parts["gpus"] = gpus_part
    rt.hub.snapshot_parts["nodes"] = nodes_part
    rt.spawn(pusher(rt), "ws-pusher")
