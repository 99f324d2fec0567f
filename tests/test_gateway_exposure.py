"""The gateway proxies only each route's own WebSocket: the services' /healthz and /metrics stay inside.

Kong matches a plain path as a string prefix, so a route on ``/consume-events``
with ``strip_path`` would also take ``/consume-events/metrics`` and
``/consume-eventshealthz`` and pass ``/metrics`` or ``/healthz`` to the service.
Raw HTTP requests, with and without the key, must get the gateway's 404 instead.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import websockets
from plain import lab_key

from labkit import Stack

SUFFIXES = ["/healthz", "/metrics", "healthz", "metrics", "/healthz/", "//metrics", "/./healthz", "/x/../metrics"]


def get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("route", ["/produce-events", "/consume-events"])
@pytest.mark.parametrize("with_key", [False, True])
def test_service_health_and_metrics_are_not_reachable_through_the_gateway(stack: Stack, route: str, with_key: bool):
    settings = stack.settings
    headers = {"apikey": lab_key(settings)} if with_key else {}
    for suffix in SUFFIXES:
        url = settings.url(settings.gateway_port, route + suffix, "http")
        for query in ("", f"?apikey={lab_key(settings)}" if with_key else "?x=1"):
            status, body = get(url + query, headers)
            assert status == 404, (route + suffix + query, status, body[:200])
            assert json.loads(body)["message"] == "no Route matched with those values"


def test_the_gateways_internal_locations_are_no_route_from_outside(stack: Stack):
    settings = stack.settings
    for path in ("/.lk-key-auth-failed/produce_events", "/.lk-key-auth-failed/consume_events"):
        status, body = get(settings.url(settings.gateway_port, path, "http"), {})
        assert status == 404 and json.loads(body)["message"] == "no Route matched with those values", (path, body)


async def test_the_routes_own_websockets_still_work(stack: Stack):
    key = lab_key(stack.settings)
    async with websockets.connect(f"{stack.settings.produce_url}?apikey={key}") as ws:
        await ws.send(json.dumps({"type": "exposure", "value": 1}))
        assert "ack" in json.loads(await ws.recv())
    async with websockets.connect(f"{stack.settings.consume_url}?types=exposure"):
        pass
