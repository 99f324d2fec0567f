"""The embedded gateway in front of the real services: routes and plugins as kong/kong.yml says."""

from __future__ import annotations

import asyncio
import json

import psutil
import pytest
import websockets
import yaml
from plain import lab_key
from waiting import wait_until
from websockets.asyncio.server import serve
from websockets.frames import CloseCode
from websockets.typing import Origin

from labkit import Sender, Settings, Stack
from labkit.events import decode_delivered
from labkit.ops.gateway import GatewayConfigError


async def refused_status(url: str, **options) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, **options):
            pass
    return refused.value.response.status_code


async def test_produce_route_needs_the_key(stack: Stack):
    url = stack.settings.produce_url
    assert await refused_status(url) == 401
    assert await refused_status(url, additional_headers={"apikey": "wrong"}) == 401
    key = lab_key(stack.settings)
    async with websockets.connect(f"{url}?apikey={key}") as ws:  # a browser's way: the query string
        await ws.send(json.dumps({"type": "auth", "value": 1}))
        assert "ack" in json.loads(await ws.recv())
    async with Sender(settings=stack.settings) as sender:  # the header
        assert (await sender.send({"type": "auth", "value": 2})).ok


async def test_key_is_refused_with_kongs_message(stack: Stack):
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(stack.settings.produce_url):
            pass
    assert json.loads(refused.value.response.body)["message"] == "No API key found in request"


async def test_origin_not_allowed_is_refused_and_allowed_origins_pass(stack: Stack):
    assert await refused_status(stack.settings.consume_url, origin=Origin("http://evil.example")) == 403
    async with websockets.connect(stack.settings.consume_url, origin=Origin("http://localhost:8888")):
        pass
    async with websockets.connect(stack.settings.consume_url):  # no Origin: a CLI client
        pass


async def test_unknown_path_is_404(stack: Stack):
    assert await refused_status(stack.settings.url(stack.settings.gateway_port, "/nowhere")) == 404


READ_TIMEOUT_MS = 1500  # the gateway closes a WebSocket that carries nothing for this long
PING_INTERVAL_S = 0.2  # the services ping more often than that


async def test_an_idle_watcher_outlives_the_read_timeout_because_the_consumer_pings(tmp_path, event_type):
    # A silent upstream (no pings) behind the same gateway, with the same read_timeout: the
    # gateway closing it shows the timeout is real, and that the watcher, older, idled past it.
    silent_upstream = await serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, ping_interval=None)
    upstream_port = silent_upstream.sockets[0].getsockname()[1]

    def tiny_timeouts(kong):
        kong["services"].append({
            "name": "silent", "url": f"http://127.0.0.1:{upstream_port}",
            "routes": [{"name": "silent", "paths": ["/silent"], "strip_path": True}],
        })
        for service in kong["services"]:
            service["read_timeout"] = service["write_timeout"] = READ_TIMEOUT_MS

    settings = _kong_copy(tmp_path, tiny_timeouts, ping_interval_s=PING_INTERVAL_S)
    try:
        with Stack(settings) as stack:
            # No client pings: only the consumer's pings cross the gateway.
            watcher = await websockets.connect(f"{settings.consume_url}?types={event_type}", ping_interval=None)
            silent = await websockets.connect(settings.url(settings.gateway_port, "/silent"), ping_interval=None)
            await wait_until(lambda: silent.state is websockets.State.CLOSED, 10 * READ_TIMEOUT_MS / 1000,
                             "the gateway did not close a connection idle for longer than read_timeout")
            assert silent.close_code == CloseCode.ABNORMAL_CLOSURE  # dropped by the gateway, no close frame
            assert watcher.state is websockets.State.OPEN, "the gateway closed a watcher the consumer pings"
            async with Sender(settings=stack.settings) as sender:
                ack = await sender.send({"type": event_type, "value": 1})
            event = decode_delivered(await asyncio.wait_for(watcher.recv(), 10))
            assert event.id == ack.ack
            await watcher.close()
    finally:
        silent_upstream.close()
        await silent_upstream.wait_closed()


def _kong_copy(tmp_path, change, **settings) -> Settings:
    kong = yaml.safe_load(Settings().kong_config.read_text())
    change(kong)
    path = tmp_path / "kong.yml"
    path.write_text(yaml.safe_dump(kong))
    return Settings(**settings).with_free_ports(state_dir=tmp_path / "state", kong_config=path)


def _produce_plugins(kong: dict) -> list[dict]:
    service = next(s for s in kong["services"] if s["name"] == "producer")
    return service["routes"][0]["plugins"]


async def test_rate_limiting_counts_upgrades_and_answers_429(tmp_path):
    def three_per_second(kong):
        for plugin in _produce_plugins(kong):
            if plugin["name"] == "rate-limiting":
                plugin["config"] = {"second": 3, "policy": "local"}

    with Stack(_kong_copy(tmp_path, three_per_second)) as stack:
        headers = {"apikey": lab_key(stack.settings)}
        statuses = []
        for _ in range(6):
            try:
                async with websockets.connect(stack.settings.produce_url, additional_headers=headers):
                    statuses.append(101)
            except websockets.InvalidStatus as exc:
                statuses.append(exc.response.status_code)
                assert json.loads(exc.response.body)["message"] == "API rate limit exceeded"
        # Three upgrades a second: `up`'s readiness probe may have taken one of this second's three.
        assert 429 in statuses, statuses
        first_refused = statuses.index(429)
        assert first_refused in (2, 3) and statuses[:first_refused] == [101] * first_refused, statuses


def test_an_unsupported_plugin_stops_the_start_with_its_name(tmp_path):
    def add_jwt(kong):
        _produce_plugins(kong).append({"name": "jwt"})

    settings = _kong_copy(tmp_path, add_jwt)
    with pytest.raises(GatewayConfigError, match="jwt"):
        Stack(settings).up()
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert not {settings.producer_port, settings.consumer_port, settings.kafka_port, settings.gateway_port} & listening
