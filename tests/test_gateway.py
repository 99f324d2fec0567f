"""The embedded gateway in front of the real services: routes and plugins as kong/kong.yml says."""

from __future__ import annotations

import asyncio
import json

import psutil
import pytest
import websockets
import yaml

from labkit import Sender, Settings, Stack
from labkit.client import lab_api_key
from labkit.gateway import GatewayConfigError


async def refused_status(url: str, **options) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, **options):
            pass
    return refused.value.response.status_code


async def test_produce_route_needs_the_key(stack: Stack):
    url = stack.settings.produce_url
    assert await refused_status(url) == 401
    assert await refused_status(url, additional_headers={"apikey": "wrong"}) == 401
    key = lab_api_key(stack.settings)
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
    assert await refused_status(stack.settings.consume_url, origin="http://evil.example") == 403
    async with websockets.connect(stack.settings.consume_url, origin="http://localhost:8888"):
        pass
    async with websockets.connect(stack.settings.consume_url):  # no Origin: a CLI client
        pass


async def test_unknown_path_is_404(stack: Stack):
    assert await refused_status(stack.settings.url(stack.settings.gateway_port, "/nowhere")) == 404


async def test_idle_connection_stays_open_through_the_gateway(stack: Stack, collect, event_type):
    watcher = await collect(types=[event_type])
    await asyncio.sleep(3)
    async with Sender(settings=stack.settings) as sender:
        await sender.send({"type": event_type, "value": 1})
    assert len(await watcher.until(1)) == 1


def _kong_copy(tmp_path, change) -> Settings:
    kong = yaml.safe_load(Settings().kong_config.read_text())
    change(kong)
    path = tmp_path / "kong.yml"
    path.write_text(yaml.safe_dump(kong))
    return Settings().with_free_ports(state_dir=tmp_path / "state", kong_config=path)


def _produce_plugins(kong: dict) -> list[dict]:
    service = next(s for s in kong["services"] if s["name"] == "producer")
    return service["routes"][0]["plugins"]


async def test_rate_limiting_counts_upgrades_and_answers_429(tmp_path):
    def three_per_second(kong):
        for plugin in _produce_plugins(kong):
            if plugin["name"] == "rate-limiting":
                plugin["config"] = {"second": 3, "policy": "local"}

    with Stack(_kong_copy(tmp_path, three_per_second)) as stack:
        headers = {"apikey": lab_api_key(stack.settings)}
        statuses = []
        for _ in range(6):
            try:
                async with websockets.connect(stack.settings.produce_url, additional_headers=headers):
                    statuses.append(101)
            except websockets.InvalidStatus as exc:
                statuses.append(exc.response.status_code)
                assert json.loads(exc.response.body)["message"] == "API rate limit exceeded"
        assert statuses[:3] == [101] * 3 and 429 in statuses[3:]


def test_an_unsupported_plugin_stops_the_start_with_its_name(tmp_path):
    def add_jwt(kong):
        _produce_plugins(kong).append({"name": "jwt"})

    settings = _kong_copy(tmp_path, add_jwt)
    with pytest.raises(GatewayConfigError, match="jwt"):
        Stack(settings).up()
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert not {settings.producer_port, settings.consumer_port, settings.kafka_port, settings.gateway_port} & listening
