"""Webhook delivery against a real local HTTP receiver: retried on 5xx until it gets through, not retried when
the receiver refuses the body, oldest delivery dropped (and counted) when the queue is full."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from orchestrator.alerts.config import WebhookTarget
from orchestrator.alerts.webhook import WebhookSender
from services.schemas import Alert, AlertSeverity
from tests.alerts.support import WebhookReceiver, until


def alert(node: str, alert_id: int, severity: AlertSeverity = AlertSeverity.CRITICAL) -> Alert:
    return Alert(id=alert_id, rule="xid", severity=severity, node=node, message="XID 79",
                 opened_at=datetime.now(UTC))


def sender(url: str, registry: CollectorRegistry, **kw) -> WebhookSender:
    target = WebhookTarget(url=url, backoff_initial_s=0.05, backoff_max_s=0.2, max_attempts=4,
                           secret="a-shared-secret-123", **kw)
    return WebhookSender([target], queue_size=kw.pop("queue", 100), workers=2, registry=registry)


def value(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("aether_alert_webhook_deliveries_total", {"result": result}) or 0.0


async def test_retried_until_delivered_and_signed():
    hook = WebhookReceiver(fail_first=2).start()
    reg = CollectorRegistry()
    s = sender(hook.url, reg)
    task = asyncio.create_task(s.run())
    try:
        s.submit("opened", alert("wh1", 1))
        s.submit("opened", alert("wh1", 2, AlertSeverity.INFO))  # still sent: this target takes every severity
        await until(lambda: len(hook.for_node("wh1")[1]) == 2, 10, "both deliveries")
        calls, received = hook.for_node("wh1")
        assert len(calls) == 4 and {d["alert"]["id"] for d in received} == {1, 2}
        assert received[0]["event"] == "opened" and received[0]["v"] == 1
        for call in calls:  # the receiver can check the body came from us, untouched
            expected = hmac.new(b"a-shared-secret-123", call["raw"], hashlib.sha256).hexdigest()
            assert call["headers"]["X-Aether-Signature"] == f"sha256={expected}"
        assert value(reg, "delivered") == 2
    finally:
        task.cancel()
        hook.stop()


async def test_a_refused_body_is_not_retried_and_a_full_queue_drops_the_oldest():
    hook = WebhookReceiver(fail_first=100, fail_status=400).start()
    reg = CollectorRegistry()
    s = sender(hook.url, reg, severities=[AlertSeverity.CRITICAL])
    s.queue_size = 2
    s.submit("opened", alert("wh2", 1))
    s.submit("opened", alert("wh2", 2))
    s.submit("opened", alert("wh2", 3))
    s.submit("opened", alert("wh2", 4, AlertSeverity.WARNING))  # not a severity this target wants
    assert [d.alert_id for d in s.queue] == [2, 3] and value(reg, "dropped") == 1
    task = asyncio.create_task(s.run())
    try:
        await until(lambda: value(reg, "failed") == 2, 10, "both deliveries to fail")
        calls, received = hook.for_node("wh2")
        assert len(calls) == 2 and received == []  # one attempt each: 400 is final
    finally:
        task.cancel()
        hook.stop()
