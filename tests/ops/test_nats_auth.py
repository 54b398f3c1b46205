"""The nats-server configuration setup.sh renders, run by a real nats-server: authentication is required,
an agent publishes only its own node's telemetry and hears only its own commands, the read-only user reads."""

from __future__ import annotations

import asyncio

import nats
import pytest
import render_config
from nats.errors import NoRespondersError, NoServersError

from services import subjects
from services.bus import ensure_telemetry_stream
from services.localstack import NatsServer
from services.schemas.base import utcnow
from services.schemas.telemetry import TelemetryBatch

SERVICE = ("aether", "service-password-0123456789")
READONLY = ("aether-readonly", "readonly-password-0123456789")


@pytest.fixture
def nodes(unique_node):
    return {unique_node: (f"agent-{unique_node}", "agent-a-password-0123456789"),
            unique_node + "b": (f"agent-{unique_node}b", "agent-b-password-0123456789")}


@pytest.fixture
def server(tmp_path, nodes):
    conf = render_config.nats_config(SERVICE, READONLY, nodes, listen="127.0.0.1:-1", monitor="127.0.0.1:-1",
                                     store_dir=str(tmp_path / "js"), server_name="aether-test",
                                     passwords_from="test")
    # NatsServer gives the store folder on the command line (-sd); nats-server refuses it twice.
    conf = "\n".join(line for line in conf.splitlines() if not line.strip().startswith("store_dir:"))
    srv = NatsServer(store_dir=tmp_path / "js", config_text=conf).start()
    yield srv
    srv.cleanup()


class Client:
    """A connection that records the asynchronous errors (permission violations) the server sends."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = None

    async def connect(self, url: str, user: str, password: str) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, user=user, password=password, error_cb=on_error,
                                     allow_reconnect=False, connect_timeout=3)
        return self

    async def violation(self, fragment: str, within_s: float = 5.0) -> str:
        """Wait for a permission violation naming `fragment`."""
        deadline = asyncio.get_running_loop().time() + within_s
        while asyncio.get_running_loop().time() < deadline:
            for err in self.errors:
                if "permissions violation" in err.lower() and fragment.lower() in err.lower():
                    return err
            await self.nc.flush(timeout=1)
        raise AssertionError(f"no permissions violation for {fragment!r}; errors: {self.errors}")


def batch(node: str) -> bytes:
    return TelemetryBatch(node=node, seq=1, time=utcnow(), samples=[]).to_bytes()


async def test_connection_without_valid_credentials_is_refused(server):
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(server.url, user=SERVICE[0], password="wrong-password-0123456789",
                           allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)


async def test_agent_publishes_only_its_own_node(server, nodes, unique_node):
    other = unique_node + "b"
    service = await Client().connect(server.url, *SERVICE)
    agent = await Client().connect(server.url, *nodes[unique_node])
    try:
        js = service.nc.jetstream()
        await ensure_telemetry_stream(js)
        seen: list[str] = []

        async def record(msg):
            seen.append(msg.subject)

        await service.nc.subscribe(subjects.TELEMETRY_ALL, cb=record)
        await service.nc.flush()

        # Its own telemetry goes through JetStream and is acknowledged (the ack arrives on its _INBOX).
        ack = await agent.nc.jetstream().publish(subjects.telemetry(unique_node), batch(unique_node), timeout=5)
        assert ack.stream == subjects.TELEMETRY_STREAM
        # Another node's telemetry and heartbeat are refused by the server.
        await agent.nc.publish(subjects.telemetry(other), batch(other))
        await agent.violation(subjects.telemetry(other))
        await agent.nc.publish(subjects.heartbeat(other), b"{}")
        await agent.violation(subjects.heartbeat(other))

        info = await js.stream_info(subjects.TELEMETRY_STREAM)
        assert info.state.messages == 1
        assert subjects.telemetry(other) not in seen

        # It may (re)create the streams it publishes into, as it does at start, but not delete them.
        await ensure_telemetry_stream(agent.nc.jetstream())
        await agent.nc.publish(f"$JS.API.STREAM.DELETE.{subjects.TELEMETRY_STREAM}", b"")
        await agent.violation(f"$JS.API.STREAM.DELETE.{subjects.TELEMETRY_STREAM}")
        assert (await js.stream_info(subjects.TELEMETRY_STREAM)).state.messages == 1
    finally:
        await agent.nc.close()
        await service.nc.close()


async def test_agent_hears_only_its_own_commands_and_answers_them(server, nodes, unique_node):
    other = unique_node + "b"
    service = await Client().connect(server.url, *SERVICE)
    agent = await Client().connect(server.url, *nodes[unique_node])
    try:
        async def answer(msg):
            await msg.respond(b'{"v":1,"ok":true}')

        await agent.nc.subscribe(subjects.cmd(unique_node, "run"), cb=answer)
        await agent.nc.flush()
        # The agent's interest reaches the requester's side of the server a moment after the agent's flush at
        # worst (it was seen once in CI: "no responders"): ask again for a few seconds before calling it refused.
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            try:
                reply = await service.nc.request(subjects.cmd(unique_node, "run"), b"{}", timeout=5)
                break
            except NoRespondersError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert reply.data == b'{"v":1,"ok":true}'

        await agent.nc.subscribe(subjects.cmd(other, "run"))
        await agent.violation(subjects.cmd(other, "run"))
    finally:
        await agent.nc.close()
        await service.nc.close()


async def test_readonly_user_reads_but_cannot_publish_or_see_commands(server, nodes, unique_node):
    service = await Client().connect(server.url, *SERVICE)
    reader = await Client().connect(server.url, *READONLY)
    try:
        await ensure_telemetry_stream(service.nc.jetstream())
        got: list[bytes] = []

        async def record(msg):
            got.append(msg.data)

        await reader.nc.subscribe(subjects.TELEMETRY_ALL, cb=record)
        await reader.nc.flush()
        await service.nc.publish(subjects.telemetry(unique_node), batch(unique_node))
        await service.nc.flush()
        await until(lambda: got, reader.nc)
        assert b'"node"' in got[0]

        info = await reader.nc.jetstream().stream_info(subjects.TELEMETRY_STREAM)
        assert info.config.name == subjects.TELEMETRY_STREAM

        await reader.nc.publish(subjects.telemetry(unique_node), batch(unique_node))
        await reader.violation(subjects.telemetry(unique_node))
        await reader.nc.subscribe(subjects.cmd_all(unique_node))
        await reader.violation(f"aether.cmd.{unique_node}")
        await reader.nc.subscribe(subjects.JOB_LOG_ALL)
        await reader.violation(subjects.JOB_LOG_ALL)
    finally:
        await reader.nc.close()
        await service.nc.close()


async def until(predicate, nc, within_s: float = 5.0) -> None:
    """Poll `predicate` (round trips to the server in between) until true or the deadline."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await nc.flush(timeout=1)
