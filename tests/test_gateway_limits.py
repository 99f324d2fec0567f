"""The gateway's own limits: failed API keys throttled per address, connections budgeted per route.

Raw HTTP requests and plain websockets clients against a real nginx, each test
on its own stack so that its counters start empty.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import time
import urllib.error
import urllib.request

import pytest
import websockets
from plain import lab_key

from labkit import Settings, Stack
from labkit.bench.runner import limits_for
from labkit.ops.gateway import load_kong_config, render_nginx_conf
from labkit.waiting import until

WRONG_KEY_ATTEMPTS = 300


def get(url: str, headers: dict[str, str]) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


@pytest.fixture
def own_stack(tmp_path):
    with Stack(Settings(max_connections=8).with_free_ports(state_dir=tmp_path)) as stack:
        yield stack


async def test_wrong_keys_from_one_address_are_throttled_and_the_right_key_still_works(own_stack: Stack):
    settings = own_stack.settings
    url = settings.url(settings.gateway_port, "/produce-events", "http")
    started = time.monotonic()
    answers = [get(url, {"apikey": f"guess-{i}"}) for i in range(WRONG_KEY_ATTEMPTS)]
    elapsed = time.monotonic() - started
    statuses = [status for status, _headers, _body in answers]
    refused = [(headers, body) for status, headers, body in answers if status == 429]
    assert refused, f"{statuses.count(401)} wrong keys in {elapsed:.1f} s, none throttled"
    assert all(body["message"] == "API rate limit exceeded" and "request_id" in body for _h, body in refused)
    assert all(int(headers["Retry-After"]) >= 1 for headers, _body in refused)
    # A bound on guesses: the burst, plus what the steady rate allows over the time taken.
    assert statuses.count(401) <= 20 + 2 * (elapsed + 1), (statuses.count(401), elapsed)
    assert statuses.index(429) < 40 and statuses.count(401) + len(refused) == WRONG_KEY_ATTEMPTS

    # The right key from the same address is not held back by the wrong ones.
    async with websockets.connect(settings.produce_url, additional_headers={"apikey": lab_key(settings)}) as ws:
        await ws.send(json.dumps({"type": "limits", "value": 1}))
        assert "ack" in json.loads(await ws.recv())
    # And a wrong key is answered 401 again once the bucket has refilled.
    async def refused_again() -> bool:
        return (await asyncio.to_thread(get, url, {"apikey": "guess-again"}))[0] == 401

    # Each look is itself a wrong key: look five times a second, so that the bucket can refill.
    await until(refused_again, "wrong keys stayed throttled", 15, poll_s=0.2, error=AssertionError)


async def test_each_route_admits_what_its_service_takes_and_no_more(own_stack: Stack):
    settings = own_stack.settings
    watchers = [await websockets.connect(settings.consume_url) for _ in range(settings.max_connections)]
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(settings.consume_url)
        assert refused.value.response.status_code == 503
        assert "try again later" in json.loads(refused.value.response.body)["message"]
        # Watchers filling their route leave the senders' route alone.
        async with websockets.connect(settings.produce_url, additional_headers={"apikey": lab_key(settings)}) as ws:
            await ws.send(json.dumps({"type": "limits", "value": 2}))
            assert "ack" in json.loads(await ws.recv())
    finally:
        for watcher in watchers:
            await watcher.close()


@pytest.mark.parametrize("max_connections", [8, 4096])
def test_worker_connections_cover_every_route_budget(tmp_path, max_connections):
    settings = Settings(max_connections=max_connections).with_free_ports(state_dir=tmp_path)
    text = render_nginx_conf(load_kong_config(settings.kong_config), settings, tmp_path)
    worker_connections = int(re.search(r"worker_connections (\d+);", text).group(1))
    nofile = int(re.search(r"worker_rlimit_nofile (\d+);", text).group(1))
    budgets = [int(n) for n in re.findall(r"limit_conn lk_route_connections (\d+);", text)]
    routes = len(load_kong_config(settings.kong_config)["services"])
    assert len(budgets) == routes and all(0 < n <= max_connections for n in budgets)
    # Each proxied WebSocket holds two connections (the client's and the service's), plus headroom
    # for answers that are not proxied (401, 404, 429).
    assert worker_connections >= 2 * sum(budgets) + 64
    assert nofile >= worker_connections


def test_the_bench_raises_the_limits_so_ten_thousand_watchers_fit_the_gateway_under_the_hard_limit(tmp_path):
    watchers = 10_000
    settings = Settings(**limits_for(watchers)).with_free_ports(state_dir=tmp_path)
    assert settings.max_connections >= watchers and settings.max_connections_per_address >= watchers
    text = render_nginx_conf(load_kong_config(settings.kong_config), settings, tmp_path)
    budgets = [int(n) for n in re.findall(r"limit_conn lk_route_connections (\d+);", text)]
    per_address = [int(n) for n in re.findall(r"limit_conn lk_address_connections (\d+);", text)]
    assert min(budgets) >= watchers and min(per_address) >= watchers
    # Each worker's files stay within the hard limit nginx inherits, and together the workers hold every
    # route's budget, two files per proxied WebSocket, with a tenth to spare for an uneven spread.
    workers = int(re.search(r"worker_processes (\d+);", text).group(1))
    nofile = int(re.search(r"worker_rlimit_nofile (\d+);", text).group(1))
    worker_connections = int(re.search(r"worker_connections (\d+);", text).group(1))
    assert nofile <= resource.getrlimit(resource.RLIMIT_NOFILE)[1] and nofile >= worker_connections
    assert workers * worker_connections * 0.9 >= 2 * sum(budgets)
    assert workers == 1 or re.search(r"listen \S+ reuseport;", text)
