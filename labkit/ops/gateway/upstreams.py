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

from typing import TYPE_CHECKING

from labkit.ops.gateway.model import EMBEDDED_SERVICE_PORTS, GatewayConfigError, Upstream, nginx_ident, Service
from labkit.ops.gateway.nginx_text import block, host_port

if TYPE_CHECKING:
    from labkit.settings import Settings

__all__ = ["read_upstreams", "upstream_block", "upstream_name", "service_addresses"]

ALGORITHMS = {"round-robin": None, "least-connections": "least_conn;"}
KONG_DEFAULT_WEIGHT = 100
KONG_DEFAULT_RETRIES = 5

_UPSTREAM_FIELDS = {"name", "id", "tags", "algorithm", "targets", "healthchecks", "created_at"}
_TARGET_FIELDS = {"target", "weight", "id", "tags", "created_at"}
_HEALTHCHECK_FIELDS = {"active", "passive"}
_ACTIVE_FIELDS = {"type", "http_path", "timeout", "concurrency", "healthy", "unhealthy", "headers"}
_PASSIVE_FIELDS = {"type", "healthy", "unhealthy"}
_HEALTHY_FIELDS = {"interval", "successes", "http_statuses"}
_UNHEALTHY_FIELDS = {"interval", "tcp_failures", "timeouts", "http_failures", "http_statuses"}


def _reject_unknown(entity: object, known: set[str], where: str) -> dict:
    if entity is None:
        return {}
    if not isinstance(entity, dict):
        raise GatewayConfigError(f"{where} must be a mapping")
    for key, value in entity.items():
        if key not in known and value not in (None, [], {}, ""):
            raise GatewayConfigError(
                f"{where}: field '{key}' is not supported by the embedded gateway; "
                "remove it, or run the compose mode where Kong itself reads kong.yml."
            )
    return entity


def _read_target(raw: dict, where: str) -> tuple[str, int, int]:
    _reject_unknown(raw, _TARGET_FIELDS, where)
    host, sep, port = str(raw.get("target", "")).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise GatewayConfigError(f"{where}: target {raw.get('target')!r} must be host:port, such as consumer:6788")
    weight = raw.get("weight", KONG_DEFAULT_WEIGHT)
    if not isinstance(weight, int) or weight < 1:
        raise GatewayConfigError(f"{where}: weight {weight!r} must be 1 or more (Kong disables a target of weight 0: remove it)")
    return host, int(port), weight


def _read_upstream(raw: dict) -> Upstream:
    name = raw.get("name")
    where = f"upstream '{name}'"
    _reject_unknown(raw, _UPSTREAM_FIELDS, where)
    if not name:
        raise GatewayConfigError("an upstream has no name; services reach it by naming it as their host")
    algorithm = raw.get("algorithm", "round-robin")
    if algorithm not in ALGORITHMS:
        raise GatewayConfigError(
            f"{where}: algorithm {algorithm!r} is not supported by the embedded gateway; "
            f"use one of {', '.join(ALGORITHMS)}"
        )
    targets = [_read_target(t, f"{where} target {i + 1}") for i, t in enumerate(raw.get("targets") or [])]
    if not targets:
        raise GatewayConfigError(f"{where}: no targets; Kong answers 503 for every request to it")
    checks = _reject_unknown(raw.get("healthchecks"), _HEALTHCHECK_FIELDS, f"{where} healthchecks")
    active = _reject_unknown(checks.get("active"), _ACTIVE_FIELDS, f"{where} healthchecks.active")
    passive = _reject_unknown(checks.get("passive"), _PASSIVE_FIELDS, f"{where} healthchecks.passive")
    for side, part in (("active", active), ("passive", passive)):
        _reject_unknown(part.get("healthy"), _HEALTHY_FIELDS, f"{where} healthchecks.{side}.healthy")
        _reject_unknown(part.get("unhealthy"), _UNHEALTHY_FIELDS, f"{where} healthchecks.{side}.unhealthy")
    unhealthy = passive.get("unhealthy") or {}
    if unhealthy.get("http_failures"):
        raise GatewayConfigError(
            f"{where}: healthchecks.passive.unhealthy.http_failures is not supported (nginx counts connection "
            "errors and timeouts only); use tcp_failures and timeouts"
        )
    failures = [n for n in (unhealthy.get("tcp_failures", 0), unhealthy.get("timeouts", 0)) if n]
    back_after = (active.get("unhealthy") or {}).get("interval", 0)
    if failures and not back_after:
        raise GatewayConfigError(
            f"{where}: passive health checks without active ones: Kong keeps a target it marked down "
            "until an admin resets it. Add healthchecks.active (its unhealthy.interval, in seconds, is when "
            "a down target is tried again)"
        )
    return Upstream(name, algorithm, targets, min(failures, default=0), int(back_after) or 10)


def read_upstreams(kong: dict) -> dict[str, Upstream]:
    """kong.yml's upstreams, by name (the name a service uses as its host)."""
    upstreams: dict[str, Upstream] = {}
    for raw in kong.get("upstreams") or []:
        upstream = _read_upstream(raw)
        if upstream.name in upstreams:
            raise GatewayConfigError(f"upstream '{upstream.name}' is defined twice")
        upstreams[upstream.name] = upstream
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
        return block(f"upstream {upstream_name(service)}", [f"server {a};" for a in service_addresses(service, settings)])
    lines = [f"# Kong upstream '{upstream.name}', algorithm {upstream.algorithm}"]
    if ALGORITHMS[upstream.algorithm]:
        lines.append(ALGORITHMS[upstream.algorithm])
    # nginx's defaults (max_fails=1 fail_timeout=10s) would mark a target down without kong.yml asking.
    health = f" max_fails={upstream.max_fails} fail_timeout={upstream.fail_timeout_s}s"
    for host, port, weight in upstream.targets:
        for address in _addresses(host, port, settings):
            lines.append(f"server {address} weight={weight}{health};")
    return block(f"upstream {upstream_name(service)}", lines)
