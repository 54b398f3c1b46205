"""A steady feed from a durable JetStream pull consumer: new pull requests go out before the old ones run dry, so
messages arrive without a round trip per batch, and never more than `credit` are held unacknowledged at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

log = logging.getLogger("aether.pullfeed")

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"
_DESCRIPTION = "Description"
_IN_PROGRESS = b"+WPI"
_NAK = b"-NAK"


class PullFeed:
    """Messages of one durable pull consumer, delivered into a local buffer.

    `outstanding` counts messages asked for and not delivered yet. A pull request ends when its batch is
    delivered (silently) or when it expires (a 408 status that says how many it left undelivered), so the
    count stays exact without knowing which request a message answered. When no message, heartbeat or status
    has come for two heartbeat intervals (server restarted, reconnect, consumer recreated) the requests are
    presumed lost and asked again; a stray late request only delivers a few messages more than the credit.
    """

    def __init__(self, nc: NATS, stream: str, consumer: str, *, batch: int, credit: int, expires_s: float,
                 heartbeat_s: float, keepalive_s: float,
                 ensure: Callable[[], Awaitable[None]] | None = None) -> None:
        self.nc = nc
        self.ensure = ensure  # makes sure the stream and consumer exist (after a server lost its store)
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = max(1, batch)
        self.credit = max(self.batch, credit)
        self.expires_ns = int(expires_s * 1e9)
        self.heartbeat_s = heartbeat_s
        self.keepalive_s = keepalive_s
        self.buf: deque[Msg] = deque()
        self.held: dict[int, list[Msg]] = {}  # handed out by take(), not yet released: ack pending
        self.held_count = 0
        self.outstanding = 0
        self.consumer_gone = False  # a 409 "Consumer Deleted": the owner recreates it and calls reset()
        self.requests = 0
        self._arrived = asyncio.Event()
        self._kick = asyncio.Event()
        self._last_heard = time.monotonic()
        self._reconnects = 0
        self._inbox = ""
        self._sub = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._reconnects = self.nc.stats.get("reconnects", 0)
        self._tasks = [asyncio.create_task(self._pump(), name="pullfeed-pump"),
                       asyncio.create_task(self._watch(), name="pullfeed-watch")]
        self._kick.set()

    async def stop(self) -> None:
        """Stop asking; hand back (NAK) what is held but not acked, so another replica gets it now rather than
        after the ack wait. A batch committed but not yet acked comes back too: its rows are skipped as stored."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        pending = [m for msgs in list(self.held.values()) for m in msgs] + list(self.buf)
        self.held.clear()
        self.buf.clear()
        with contextlib.suppress(Exception):
            for m in pending:
                await self.nc.publish(m.reply, _NAK)

    # -- consuming side ---------------------------------------------------------------------------------------

    async def take(self, max_msgs: int) -> list[Msg]:
        """Wait for at least one message; return up to `max_msgs` of those buffered. They stay counted
        against the credit until `release` (after they are acked)."""
        while not self.buf:
            self._arrived.clear()
            await self._arrived.wait()
        n = min(max_msgs, len(self.buf))
        popleft = self.buf.popleft
        msgs = [popleft() for _ in range(n)]
        self.held[id(msgs)] = msgs
        self.held_count += n
        return msgs

    def take_more(self, msgs: list[Msg], max_msgs: int) -> None:
        """Add to a list handed out by `take` (same credit record) up to `max_msgs` of what is buffered now."""
        n = min(max_msgs - len(msgs), len(self.buf))
        if n <= 0:
            return
        popleft = self.buf.popleft
        msgs.extend(popleft() for _ in range(n))
        self.held_count += n

    def release(self, msgs: list[Msg]) -> None:
        """The messages are acked (or otherwise settled): their credit can be asked again."""
        if self.held.pop(id(msgs), None) is not None:
            self.held_count -= len(msgs)
            self._kick.set()

    async def ack(self, msgs: list[Msg]) -> None:
        """Acknowledge each message (explicit acks: replicas sharing the consumer each ack only their own)."""
        publish = self.nc.publish
        for m in msgs:
            await publish(m.reply)

    def reset(self) -> None:
        """Forget the pull requests in flight (they are presumed lost) and ask again."""
        self.outstanding = 0
        self.consumer_gone = False
        self._last_heard = time.monotonic()
        self._kick.set()

    async def recover(self, why: str) -> None:
        """Make sure the consumer exists, then ask again."""
        log.warning("asking for messages again", extra={"reason": why, "outstanding": self.outstanding})
        if self.ensure is not None:
            try:
                await self.ensure()
            except Exception as exc:  # NATS still away: the next watch round tries again
                log.warning("consumer not ensured", extra={"error": repr(exc)})
                self._last_heard = time.monotonic()
                return
        self.reset()

    @property
    def buffered(self) -> int:
        return len(self.buf)

    # -- delivery side ----------------------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        hdr = msg.headers
        if hdr and _STATUS in hdr and not msg.reply:
            self._on_status(hdr)
            return
        self.buf.append(msg)
        if self.outstanding > 0:
            self.outstanding -= 1
        if self.outstanding < self.batch:
            self._kick.set()
        self._arrived.set()

    def _on_status(self, hdr: dict[str, str]) -> None:
        status = hdr.get(_STATUS, "")
        if status == "100":  # idle heartbeat: the request is alive
            return
        pending = hdr.get(_PENDING)
        if status in ("404", "408", "409") and pending is not None:
            # The request ended (expired, or cut short) leaving `pending` of its batch undelivered.
            self.outstanding = max(0, self.outstanding - int(pending))
        else:
            desc = hdr.get(_DESCRIPTION, "")
            if status == "409" and "deleted" in desc.lower():
                self.consumer_gone = True
            log.warning("pull request ended", extra={"status": status, "description": desc})
            self.outstanding = 0
        self._kick.set()

    async def _pump(self) -> None:
        """Top the outstanding requests up to the credit, in requests of at least `batch` messages."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self.consumer_gone or not self.nc.is_connected:
                continue
            room = self.credit - self.outstanding - len(self.buf) - self.held_count
            if room >= self.batch or (room > 0 and self.outstanding == 0):
                req = {"batch": room, "expires": self.expires_ns,
                       "idle_heartbeat": int(self.heartbeat_s * 1e9)}
                try:
                    await self.nc.publish(self.next_subject, orjson.dumps(req), reply=self._inbox)
                except Exception as exc:  # disconnected: the watch loop asks again after reconnecting
                    log.warning("pull request not sent", extra={"error": repr(exc)})
                    continue
                self.outstanding += room
                self.requests += 1

    async def _watch(self) -> None:
        """Re-ask when requests are presumed lost; keep held messages from being redelivered while a slow
        write (database down) holds them longer than the ack wait."""
        last_keepalive = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat_s))
            now = time.monotonic()
            reconnects = self.nc.stats.get("reconnects", 0)
            if reconnects != self._reconnects and self.nc.is_connected:
                # Pull requests do not survive a reconnect to a restarted server.
                self._reconnects = reconnects
                await self.recover("reconnected")
            elif self.consumer_gone:
                await self.recover("consumer deleted")
            elif self.outstanding > 0 and now - self._last_heard > 2 * self.heartbeat_s + 1:
                await self.recover("pull requests went quiet")
            else:
                self._kick.set()
            if now - last_keepalive >= self.keepalive_s:
                last_keepalive = now
                await self._keepalive()

    async def _keepalive(self) -> None:
        pending = [m for msgs in list(self.held.values()) for m in msgs] + list(self.buf)
        if not pending or not self.nc.is_connected:
            return
        for m in pending:
            try:
                await self.nc.publish(m.reply, _IN_PROGRESS)
            except Exception:
                return  # NATS away: redelivery (idempotent writes) covers it
