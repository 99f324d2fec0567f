"""Kong upstreams and targets: reading them from kong.yml, rendering them as nginx upstream blocks.

In Kong a service whose ``host`` is an upstream's name is balanced over that
upstream's targets. Each target names a host and port; in compose mode the host
is a Compose service scaled to N containers, and Kong adds every address its DNS
name resolves to as a target of its own (Kong's documented behaviour for A
records). In embedded mode a target whose host names a service labkit runs
(``producer``, ``consumer``) stands for that service's replicas: one nginx
``server`` per replica, on the ports ``Settings.replicas`` gives. So the one
file describes both modes, and the replica count lives in the settings
(``LABKIT_CONSUMERS``), never in kong.yml.

What nginx (without its commercial active checks) can honour:

- ``algorithm``: ``round-robin`` (nginx's default) and ``least-connections``
  (``least_conn``, which spreads long-lived WebSockets evenly);
- target ``weight`` (1 or more);
- passive health checks: ``unhealthy.tcp_failures`` / ``timeouts`` become
  ``max_fails``; a target marked down comes back in Kong through active checks,
  so ``active.unhealthy.interval`` (seconds) becomes ``fail_timeout``, after
  which nginx tries the target again with live traffic;
- the service's ``retries`` become ``proxy_next_upstream_tries`` (a refused
  connection goes on to the next target, a WebSocket upgrade included).

Anything else on an upstream is refused with GatewayConfigError.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from pydantic import field_validator, model_validator

from labkit.ops.gateway.model import (
    BOOKKEEPING,
    EMBEDDED_SERVICE_PORTS,
    GatewayConfigError,
    KongEntity,
    Service,
    Upstream,
    matching,
    nginx_ident,
    one_of,
    refusing,
)
from labkit.ops.gateway.nginx_text import block, host_port

if TYPE_CHECKING:
    from labkit.settings import Settings

__all__ = ["UpstreamEntry", "read_upstreams", "upstream_block", "upstream_name", "service_addresses"]

ALGORITHMS = {"round-robin": None, "least-connections": "least_conn;"}
KONG_DEFAULT_WEIGHT = 100
_HOST_PORT_RE = re.compile(r".+:[0-9]+")


class _Target(KongEntity):
    target: Annotated[str, matching(_HOST_PORT_RE, "target {value!r} must be host:port, such as consumer:6788")]
    weight: Annotated[int, refusing(lambda weight: weight >= 1, "weight {value!r} must be 1 or more (Kong disables a "
                                    "target of weight 0: remove it)")] = KONG_DEFAULT_WEIGHT  # fmt: skip
    IGNORED = BOOKKEEPING | {"id"}


class _Healthy(KongEntity):
    interval: float = 0
    successes: int = 0
    http_statuses: list[int] | None = None


class _Unhealthy(KongEntity):
    interval: float = 0  # active checks: seconds before a target marked down is tried again
    tcp_failures: int = 0
    timeouts: int = 0
    http_failures: int = 0
    http_statuses: list[int] | None = None


class _Checks(KongEntity):
    type: str = "http"
    healthy: _Healthy = _Healthy()
    unhealthy: _Unhealthy = _Unhealthy()


class _PassiveChecks(_Checks):
    @field_validator("unhealthy")
    @classmethod
    def _no_http_failures(cls, unhealthy: _Unhealthy) -> _Unhealthy:
        if unhealthy.http_failures:
            raise ValueError("healthchecks.passive.unhealthy.http_failures is not supported (nginx counts "
                             "connection errors and timeouts only); use tcp_failures and timeouts")  # fmt: skip
        return unhealthy


class _ActiveChecks(_Checks):
    IGNORED = frozenset({"http_path", "timeout", "concurrency", "headers"})  # nginx runs no active checks


class _HealthChecks(KongEntity):
    active: _ActiveChecks = _ActiveChecks()
    passive: _PassiveChecks = _PassiveChecks()


class UpstreamEntry(KongEntity):
    """A Kong upstream as kong.yml writes it: what nginx (without active checks) can honour."""

    name: str
    algorithm: Annotated[str, one_of(ALGORITHMS, "algorithm {value!r} is not supported by the embedded gateway; "
                                     f"use one of {', '.join(ALGORITHMS)}")] = "round-robin"  # fmt: skip
    targets: list[_Target] = []
    healthchecks: _HealthChecks = _HealthChecks()
    IGNORED = BOOKKEEPING | {"id"}

    @model_validator(mode="after")
    def _honoured(self) -> UpstreamEntry:
        if not self.targets:
            raise ValueError("no targets; Kong answers 503 for every request to it")
        if self.failures and not self.healthchecks.active.unhealthy.interval:
            raise ValueError(
                "passive health checks without active ones: Kong keeps a target it marked down until an admin "
                "resets it. Add healthchecks.active (its unhealthy.interval, in seconds, is when a down target "
                "is tried again)"
            )
        return self

    @property
    def failures(self) -> int:
        """Connection failures or timeouts (the fewer) after which nginx marks a target down; 0: never."""
        unhealthy = self.healthchecks.passive.unhealthy
        return min((n for n in (unhealthy.tcp_failures, unhealthy.timeouts) if n), default=0)


def read_upstreams(entries: list[UpstreamEntry]) -> dict[str, Upstream]:
    """kong.yml's upstreams, by name (the name a service uses as its host)."""
    upstreams: dict[str, Upstream] = {}
    for entry in entries:
        if entry.name in upstreams:
            raise GatewayConfigError(f"upstream '{entry.name}' is defined twice")
        targets = []
        for target in entry.targets:
            host, port = target.target.rsplit(":", 1)
            targets.append((host, int(port), target.weight))
        back_after = int(entry.healthchecks.active.unhealthy.interval) or 10
        upstreams[entry.name] = Upstream(entry.name, entry.algorithm, targets, entry.failures, back_after)
    return upstreams


def _addresses(host: str, port: int, settings: Settings | None) -> list[str]:
    """Where a host and port really are: labkit's own services, in embedded mode, are their replicas."""
    if settings is not None and host in EMBEDDED_SERVICE_PORTS:
        return [host_port(settings.host, replica_port) for _, replica_port in settings.replicas(host)]
    return [host_port(host, port)]


def service_addresses(service: Service, settings: Settings | None) -> list[str]:
    """Every address the gateway may send a service's traffic to."""
    if service.upstream is None:
        name = service.name if service.name in EMBEDDED_SERVICE_PORTS else service.host
        return _addresses(name, service.port, settings)
    return [address for host, port, _ in service.upstream.targets for address in _addresses(host, port, settings)]


def upstream_name(service: Service) -> str:
    return f"lk_service_{nginx_ident(service.name)}"


def upstream_block(service: Service, settings: Settings | None) -> list[str]:
    """The nginx upstream a service's routes proxy to: its targets, algorithm and passive checks."""
    upstream = service.upstream
    if upstream is None:
        return block(f"upstream {upstream_name(service)}",
                     [f"server {a};" for a in service_addresses(service, settings)])
    lines = [f"# Kong upstream '{upstream.name}', algorithm {upstream.algorithm}"]
    if (directive := ALGORITHMS[upstream.algorithm]) is not None:
        lines.append(directive)
    # nginx's defaults (max_fails=1 fail_timeout=10s) would mark a target down without kong.yml asking.
    health = f" max_fails={upstream.max_fails} fail_timeout={upstream.fail_timeout_s}s"
    for host, port, weight in upstream.targets:
        for address in _addresses(host, port, settings):
            lines.append(f"server {address} weight={weight}{health};")
    return block(f"upstream {upstream_name(service)}", lines)
