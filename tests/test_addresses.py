"""One client address cannot starve the others: read-back slots, watchers and sender upgrades.

One address attacks as an independent tester did: resumers that never read,
4,096 watchers, and sender upgrades with the lab key past the route's rate
limit. A client from a second loopback address (127.0.0.2, bound as the source
of its socket) still resumes, watches and sends. Every client is plain
websockets; the stack is a real one on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
from collections.abc import Iterator

import pytest
import websockets
import yaml
from conftest import stored
from plain import lab_key
from waiting import wait_until

from labkit import Sender, Settings, Stack

OTHER = ("127.0.0.2", 0)  # the legitimate client's source address: loopback, another address
UPGRADES_PER_MINUTE = 10  # the produce route's rate limit in this stack's copy of kong.yml


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """A stack whose kong.yml is the lab's, with the senders' upgrade limit made small enough to reach."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 4,096 watchers need the sockets
    folder = tmp_path_factory.mktemp("addresses")
    kong = yaml.safe_load(Settings().kong_config.read_text())
    producer = next(s for s in kong["services"] if s["name"] == "producer")
    limit = next(p for p in producer["routes"][0]["plugins"] if p["name"] == "rate-limiting")
    assert limit["config"]["limit_by"] == "ip", "kong.yml counts sender upgrades per client address"
    limit["config"]["minute"] = UPGRADES_PER_MINUTE
    (folder / "kong.yml").write_text(yaml.safe_dump(kong))
    with Stack(Settings().with_free_ports(state_dir=folder / "state", kong_config=folder / "kong.yml")) as running:
        yield running
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def connect(url: str, **options):
    """A connection, or the HTTP status or close code that refused it."""
    try:
        return await websockets.connect(url, open_timeout=30, **options)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


@contextlib.contextmanager
def dropped_after(connections: list):
    """Drop the attacker's connections at the end, without a close handshake."""
    try:
        yield
    finally:
        for ws in connections:
            if not isinstance(ws, int):
                ws.transport.abort()


def watchers(stack: Stack) -> int:
    return stack.health("consumer")["watchers"]


async def quiet(stack: Stack) -> None:
    """Wait until the consumer holds no watcher and no read-back: the last test's clients are gone."""
    await wait_until(lambda: watchers(stack) == 0 and stack.health("consumer")["resuming"] == 0, 30,
                     "the consumer still holds the last test's watchers")


async def send_one(settings: Settings, event_type: str, value: int, **options) -> dict:
    """One event sent from a plain websockets sender; its reply."""
    async with websockets.connect(settings.produce_url, additional_headers={"apikey": lab_key(settings)},
                                  **options) as ws:
        await ws.send(json.dumps({"type": event_type, "value": value, "key": "one"}))
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def another_address_watches(settings: Settings, url: str, event_type: str) -> None:
    """From 127.0.0.2, a watcher at ``url`` gets the event a sender from there sends."""
    async with websockets.connect(url, local_addr=OTHER) as watcher:
        reply = await send_one(settings, event_type, 7, local_addr=OTHER)
        assert "ack" in reply, reply
        event = json.loads(await asyncio.wait_for(watcher.recv(), 10))
        assert (event["value"], event["offset"]) == (7, reply["offset"])


async def test_resumers_that_never_read_from_one_address_leave_a_resume_to_another(stack: Stack, event_type):
    settings = stack.settings
    async with Sender(settings=settings) as sender:
        acks = await sender.send_many(
            [{"type": event_type, "value": i, "key": "one", "data": {"pad": "x" * 900}} for i in range(20_000)],
            batch=50,
        )
    (_, partition, first), (_, _, last) = stored(acks[0]), stored(acks[-1])
    whole = f"{settings.consume_url}?types={event_type}&resume={partition}:{first - 1}&since=0"
    # 20 resumers of the whole 20 MB gap that never read (websockets stops reading after 16 frames).
    attackers = [await connect(whole, max_size=None) for _ in range(20)]
    held = [ws for ws in attackers if not isinstance(ws, int)]
    with dropped_after(held):
        refused = []
        for ws in held:
            try:
                await asyncio.wait_for(ws.recv(), 10)  # the recovery frame, or the refusal
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None, "closed without a close frame"
                refused.append(exc.rcvd.reason)
        per_address = settings.max_resumes_per_address
        assert len(refused) == 20 - per_address, refused
        assert all("too many resumes" in reason and "from your address" in reason for reason in refused), refused
        # From another address, a resume is whole and gets what it missed.
        tail = f"{settings.consume_url}?types={event_type}&resume={partition}:{last - 5}&since=0"
        async with websockets.connect(tail, local_addr=OTHER) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"recovered": True}
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(5)]
        assert [f["offset"] for f in got] == list(range(last - 4, last + 1))


async def test_4096_watchers_from_one_address_leave_a_watcher_to_another(stack: Stack, event_type):
    settings = stack.settings
    await quiet(stack)
    url = f"{settings.consume_url}?types={event_type}"
    flood: list = []
    for _ in range(settings.max_connections // 256):  # 4,096 in all, 256 at a time
        flood += await asyncio.gather(*(connect(url) for _ in range(256)))
    held = [ws for ws in flood if not isinstance(ws, int)]
    with dropped_after(held):
        statuses = {status for status in flood if isinstance(status, int)}
        assert len(held) == settings.max_connections_per_address and statuses == {503}, (len(held), statuses)
        await another_address_watches(settings, url, event_type)


async def test_a_watcher_flood_straight_at_the_consumer_is_counted_per_address(stack: Stack, event_type):
    """Past the gateway, the consumer counts each address too (the gateway's X-Real-IP, else the peer)."""
    settings = stack.settings
    await quiet(stack)
    url = settings.url(settings.consumer_port, f"/?types={event_type}")
    per_address = settings.max_connections_per_address
    flood = await asyncio.gather(*(connect(url) for _ in range(per_address + 20)))
    with dropped_after(flood):

        def closed() -> list[str]:
            return [ws.close_reason for ws in flood if ws.close_code is not None]

        await wait_until(lambda: len(closed()) >= 20, 10, lambda: f"{len(closed())} of 20 closed")
        await wait_until(lambda: watchers(stack) == per_address, 10, "the consumer did not settle")
        assert len(closed()) == 20 and all("from your address" in reason for reason in closed()), closed()
        await another_address_watches(settings, url, event_type)


async def test_sender_upgrades_past_the_limit_from_one_address_leave_an_upgrade_to_another(stack: Stack, event_type):
    settings = stack.settings
    headers = {"apikey": lab_key(settings)}
    statuses: list[int] = []
    while 429 not in statuses:  # the lab key, from one address, until the route says no
        assert len(statuses) <= UPGRADES_PER_MINUTE, statuses
        answer = await connect(settings.produce_url, additional_headers=headers)
        statuses.append(answer if isinstance(answer, int) else 101)
        if not isinstance(answer, int):
            await answer.close()
    # The same key from another address: its own budget.
    reply = await send_one(settings, event_type, 9, local_addr=OTHER)
    assert "ack" in reply, reply
