"""labkit's own limits in the embedded gateway (not Kong plugins): connections per route, failed API keys.

Connections. Each route admits at most as many requests at once as its service
accepts connections (``settings.max_connections``, 4,096 by default; a proxied
WebSocket is one request for its whole life). So watchers on ``/consume-events``
have a budget of their own that senders cannot use up, and the other way round;
past it the gateway answers 503 (try again later) instead of passing on a
connection the service would close with 1013. One client address may hold at
most ``settings.max_connections_per_address`` of a route's budget (the services
count the same per address, from ``X-Real-IP``), so one address cannot starve
the others; Kong has no such plugin, and in compose mode the services' own
count is the limit. nginx holds two connections per
proxied WebSocket (the client's and the service's), so ``worker_connections`` is
twice the sum of the route budgets plus ``HEADROOM`` for answers that are never
proxied (401, 404, 429, preflights). The open-files limit holds per worker process,
and with ``settings.gateway_workers`` above 1 the kernel spreads new connections
over the workers (``listen ... reuseport``), so together they hold that many times
what one holds. Where they cannot hold every budget, every route's budget shrinks
alike, and the config says so.

Failed API keys. A request refused by key-auth (no key, an unknown key, a key
given twice) is counted per client address; past ``gateway_auth_failure_burst`` (settings) at once,
and then ``gateway_auth_failures_per_s`` a second, the address gets 429 with Kong's
rate-limit message instead of 401, so keys cannot be guessed at line rate. A
request with a valid key is never counted, so the right key keeps working.
nginx's limit_req runs after the phase where key-auth answers 401, so refused
requests are first sent to an internal location, where limit_req counts them
before ``try_files`` gives the 401.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass

from labkit.ops.gateway.model import Plugin, Route
from labkit.ops.gateway.nginx_plugins import cors_headers, key_auth_failed_uri
from labkit.ops.gateway.nginx_text import (
    DUPLICATE_API_KEY,
    INVALID_API_KEY,
    NO_API_KEY,
    NO_ROUTE,
    block,
    comment,
    error_body,
    quote,
)
from labkit.settings import Settings

HEADROOM = 256  # connections that are never proxied: refusals, 404s, preflights
FILES_OVERHEAD = 64  # open files that are not connections: logs, the listening socket, temp files
NOFILE_CAP = 1 << 20  # where the hard limit is unlimited
ROUTE_FULL = "Too many connections on this route, or from your address on it: try again later"
RATE_LIMITED = "API rate limit exceeded"  # Kong's rate-limiting message


@dataclass(frozen=True)
class ConnectionBudget:
    per_route: int  # requests (WebSockets) each route admits at once
    per_address: int  # of those, from one client address
    wanted: int  # what the services take: settings.max_connections
    worker_connections: int  # per worker
    worker_rlimit_nofile: int  # per worker
    workers: int


def _proxied_per_worker() -> int:
    """Proxied WebSockets one nginx worker holds under this process's hard limit on open files (nginx inherits it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = NOFILE_CAP if hard == resource.RLIM_INFINITY else min(hard, NOFILE_CAP)
    return max(1, (nofile - FILES_OVERHEAD - HEADROOM) // 2)


def connection_budget(routes: int, settings: Settings) -> ConnectionBudget:
    """Route budgets as large as the services' limit, and the nginx connections and files they need."""
    routes, workers = max(routes, 1), settings.gateway_workers
    per_worker = _proxied_per_worker()
    per_route = min(settings.max_connections, max(1, workers * per_worker // routes))
    worker_connections = min(2 * per_route * routes, 2 * per_worker) + HEADROOM
    nginx_files = worker_connections + FILES_OVERHEAD
    per_address = min(settings.max_connections_per_address, per_route)
    return ConnectionBudget(per_route, per_address, settings.max_connections, worker_connections, nginx_files,
                            workers)


def workers_for(per_route: int, routes: int) -> int:
    """nginx workers whose open files hold ``per_route`` proxied WebSockets on each of ``routes`` routes.

    A tenth to spare: the kernel spreads connections over the workers by a hash of their addresses, so
    evenly on the whole but not exactly.
    """
    return max(1, math.ceil(per_route * max(routes, 1) / (_proxied_per_worker() * 0.9)))


def budget_comment(budget: ConnectionBudget, routes: int) -> list[str]:
    text = (
        f"Each of the {routes} routes admits {budget.per_route} connections at once (its budget), {budget.per_address} "
        "of them from one client address; a proxied\n"
        f"WebSocket holds two nginx connections, so 2 x {routes} x {budget.per_route} + {HEADROOM} for answers "
        "that are not proxied."
    )
    if budget.workers > 1:
        text += (f"\nThey are spread over {budget.workers} workers (listen ... reuseport), each with open files of its "
                 "own: a worker takes what its files hold.")
    if budget.per_route < budget.wanted:
        text += (
            f"\nThe services take {budget.wanted} each, but the open-files limit (ulimit -Hn) leaves room for "
            f"{budget.per_route} per route only: raise it, or gateway_workers, to give the gateway the services' "
            "limit."
        )
    return comment(text)


def route_connection_limit(route: Route, budget: ConnectionBudget) -> list[str]:
    """In a route's location: its connection budget (labkit's rule: the route's own, not shared)."""
    return [
        f"set $lk_route {quote(route.ident)};",
        f"limit_conn lk_route_connections {budget.per_route};",
        f"limit_conn lk_address_connections {budget.per_address};  # per client address, of the route's budget",
        "limit_conn_status 503;",
        "limit_conn_log_level info;  # a full route is an answer, not an error worth logging",
        "error_page 503 = @lk_route_full;",
    ]


def _auth_failures(settings: Settings) -> tuple[float, int]:
    """Per address: refused keys a second, and at once (settings fields once they exist)."""
    return (
        settings.gateway_auth_failures_per_s,
        settings.gateway_auth_failure_burst,
    )


def http_limits(uses_key_auth: bool, settings: Settings) -> list[str]:
    lines = [
        *comment("labkit's limits (labkit/ops/gateway/nginx_limits.py): connections per route and per address on it, "
                 "failed API keys."),
        "limit_conn_zone $lk_route zone=lk_route_connections:1m;",
        "limit_conn_zone $lk_route$binary_remote_addr zone=lk_address_connections:10m;",
    ]
    if uses_key_auth:
        lines.append(
            f"limit_req_zone $binary_remote_addr zone=lk_key_auth_failures:10m rate={_auth_failures(settings)[0]:g}r/s;"
        )
    return lines


def server_limits() -> list[str]:
    return [
        "",
        *comment("A route past its connection budget (labkit's rule): 503, come back later."),
        *block(
            "location @lk_route_full", ["add_header Retry-After 1 always;", f"return 503 {error_body(ROUTE_FULL)};"]
        ),
        *block("location @lk_no_route", [f"return 404 {error_body(NO_ROUTE)};"]),
    ]


def key_auth_failure_locations(plugin: Plugin, route: Route, settings: Settings) -> list[str]:
    """Where key-auth refusals of this route are counted per address (429 past the bound), else answered 401."""
    per_s, burst = _auth_failures(settings)
    realm = f'Key realm="{plugin.config["realm"]}"' if plugin.config["realm"] else "Key"
    counted = block(
        f"location = {key_auth_failed_uri(route)}",
        [
            "internal;",
            "error_page 404 = @lk_no_route;  # asked for from outside: no such route, as for any other path",
            f"limit_req zone=lk_key_auth_failures burst={burst} nodelay;",
            "limit_req_status 429;",
            "limit_req_log_level info;",
            f"error_page 429 = @lk_key_auth_throttled_{route.ident};",
            f"error_page 401 = @lk_key_auth_refused_{route.ident};",
            "try_files /.lk-never-a-file =401;  # the 401 comes after limit_req has counted the request",
        ],
    )
    refused = block(
        f"location @lk_key_auth_refused_{route.ident}",
        [
            *cors_headers(route),
            f"add_header WWW-Authenticate {quote(realm)} always;",
            *block("if ($lk_key_auth_failure = duplicate)", [f"return 401 {error_body(DUPLICATE_API_KEY)};"]),
            *block("if ($lk_key_auth_failure = missing)", [f"return 401 {error_body(NO_API_KEY)};"]),
            f"return 401 {error_body(INVALID_API_KEY)};",
        ],
    )
    throttled = block(
        f"location @lk_key_auth_throttled_{route.ident}",
        [
            *cors_headers(route),
            f"add_header Retry-After {max(1, math.ceil(1 / per_s))} always;",  # when the bucket has room again
            f"return 429 {error_body(RATE_LIMITED)};",
        ],
    )
    return [
        *comment(
            f"key-auth refusals on route '{route.name}', counted per client address: {burst} at once, "
            f"then {per_s:g} a second; past that, 429 instead of 401."
        ),
        *counted,
        *refused,
        *throttled,
    ]
