"""The local servers the other tests rely on really start and answer."""

import asyncio

import asyncpg
import nats


def test_nats_and_jetstream(nats_server):
    async def go():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.x", b"hi")
        await nc.close()
        return ack.seq

    assert asyncio.run(go()) == 1


def test_postgres_database(database_url, pg_server):
    async def go():
        conn = await asyncpg.connect(database_url)
        v = await conn.fetchval("select 1 + 1")
        exts = await conn.fetch("select name from pg_available_extensions where name = 'timescaledb'")
        await conn.close()
        return v, bool(exts)

    value, has_ts = asyncio.run(go())
    assert value == 2
    assert has_ts == bool(pg_server.timescale)
