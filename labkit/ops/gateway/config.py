"""Reading kong.yml: the file, then its services, routes and consumers, checked.

Each route gets the plugins that run on it (Kong's precedence: route over
service over global); the plugins themselves are read in :mod:`.plugins`.
Anything the embedded gateway cannot do faithfully raises GatewayConfigError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from labkit.settings import Settings
from labkit.ops.gateway.upstreams import read_upstreams, service_addresses

from labkit.ops.gateway.model import (
    API_KEY_RE,
    HEADER_VALUE_RE,
    HOST_RE,
    METHOD_RE,
    PATH_RE,
    PLUGIN_PRIORITY,
    GatewayConfigError,
    Consumer,
    Gateway,
    nginx_ident,
    Plugin,
    Route,
    Service,
    exact_path,
    request_path,
)
from labkit.ops.gateway.plugins import read_plugin

KONG_FORMAT_VERSION = "3.0"
KONG_DEFAULT_TIMEOUT_MS = 60_000


def load_kong_config(path: Path) -> dict:
    """Read a Kong declarative config (YAML or JSON) and check its format version."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GatewayConfigError(
            f"Kong config not found: {path}. Point settings.kong_config (LABKIT_KONG_CONFIG) "
            "at a Kong declarative config such as kong/kong.yml."
        ) from None
    except OSError as exc:
        raise GatewayConfigError(f"cannot read Kong config {path}: {exc}") from None
    try:
        kong = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GatewayConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(kong, dict):
        raise GatewayConfigError(f"{path} must hold a mapping (Kong declarative config), not {type(kong).__name__}")
    version = kong.get("_format_version")
    if version != KONG_FORMAT_VERSION:
        raise GatewayConfigError(
            f"{path}: _format_version is {version!r}; labkit reads Kong declarative config "
            f'_format_version: "{KONG_FORMAT_VERSION}" (a quoted string).'
        )
    return kong


def _reject_unknown(entity: dict, known: set[str], where: str) -> None:
    """Refuse any field the gateway does not understand, unless it is empty."""
    for key, value in entity.items():
        if key not in known and value not in (None, [], {}, ""):
            raise GatewayConfigError(
                f"{where}: field '{key}' is not supported by the embedded gateway; "
                "remove it, or run the compose mode where Kong itself reads kong.yml."
            )


def _name_of(ref: Any) -> str | None:
    """A reference to a service, route or consumer: a name or id, or {name:} / {id:}."""
    if isinstance(ref, dict):
        return ref.get("name") or ref.get("id")
    return ref


_TOP_LEVEL = {
    "_format_version",
    "_transform",
    "comment",
    "_ignore",
    "_info",
    "services",
    "routes",
    "plugins",
    "consumers",
    "upstreams",
}
_SERVICE_FIELDS = {
    "name", "id", "tags", "url", "protocol", "host", "port", "path", "enabled", "retries",
    "connect_timeout", "read_timeout", "write_timeout", "routes", "plugins", "created_at", "updated_at",
}  # fmt: skip
_ROUTE_FIELDS = {
    "name", "id", "tags", "service", "paths", "strip_path", "preserve_host", "methods", "hosts", "protocols",
    "path_handling", "regex_priority", "request_buffering", "response_buffering",
    "https_redirect_status_code", "plugins", "created_at", "updated_at",
}  # fmt: skip
_CONSUMER_FIELDS = {"username", "custom_id", "id", "tags", "keyauth_credentials", "created_at", "updated_at"}
_CREDENTIAL_FIELDS = {"key", "id", "tags", "consumer", "created_at"}


def read_gateway(kong: dict) -> Gateway:
    """Kong's entities, checked, with each route's plugins resolved as Kong would."""
    _reject_unknown(kong, _TOP_LEVEL, "kong.yml top level")
    services: dict[str, Service] = {}  # by name and by id
    routes: dict[str, Route] = {}  # by name and by id
    ordered_routes: list[Route] = []
    scoped_plugins: list[tuple[dict, str, str | None]] = []  # (plugin, scope, route or service name)

    def add_route(raw: dict, service: Service) -> None:
        route = _read_route(raw, service, {r.ident for r in ordered_routes})
        ordered_routes.append(route)
        routes.update(dict.fromkeys(filter(None, (raw.get("name"), raw.get("id"))), route))
        scoped_plugins.extend((plugin, "route", route.name) for plugin in raw.get("plugins") or [])

    upstreams = read_upstreams(kong)
    for raw in kong.get("services") or []:
        service = _read_service(raw)
        service.upstream = upstreams.get(service.host)  # Kong: a service whose host names an upstream is balanced
        services.update(dict.fromkeys(filter(None, (raw.get("name"), raw.get("id"))), service))
        scoped_plugins.extend((plugin, "service", service.name) for plugin in raw.get("plugins") or [])
        for raw_route in raw.get("routes") or []:
            add_route(raw_route, service)
    for raw in kong.get("routes") or []:
        ref = _name_of(raw.get("service"))
        if ref not in services:
            raise GatewayConfigError(f"route '{raw.get('name')}': service {ref!r} is not defined in kong.yml")
        add_route(raw, services[ref])
    for raw in kong.get("plugins") or []:
        route_ref, service_ref = _name_of(raw.get("route")), _name_of(raw.get("service"))
        if route_ref and service_ref:
            raise GatewayConfigError(
                f"plugin '{raw.get('name')}' is scoped to route {route_ref!r} and service {service_ref!r} at "
                "once; the embedded gateway supports one scope: attach it to the route."
            )
        if route_ref:
            if route_ref not in routes:
                raise GatewayConfigError(f"plugin '{raw.get('name')}': route {route_ref!r} is not defined")
            scoped_plugins.append((raw, "route", routes[route_ref].name))
        elif service_ref:
            if service_ref not in services:
                raise GatewayConfigError(f"plugin '{raw.get('name')}': service {service_ref!r} is not defined")
            scoped_plugins.append((raw, "service", services[service_ref].name))
        else:
            scoped_plugins.append((raw, "global", None))

    live_routes = [route for route in ordered_routes if route.service.enabled]
    _attach_plugins(scoped_plugins, live_routes)
    consumers = [_read_consumer(raw) for raw in kong.get("consumers") or []]
    _check_unique_keys(consumers)
    _check_unique_paths(live_routes)
    return Gateway(live_routes, consumers)


def _read_service(raw: dict) -> Service:
    name = raw.get("name") or raw.get("id")
    where = f"service '{name}'"
    _reject_unknown(raw, _SERVICE_FIELDS, where)
    if raw.get("url"):
        parts = urlsplit(raw["url"])
        protocol, host, path = parts.scheme, parts.hostname, parts.path or "/"
        port = parts.port
    else:
        protocol, host, path = raw.get("protocol", "http"), raw.get("host"), raw.get("path") or "/"
        port = raw.get("port")
    if protocol not in ("http", "ws"):
        raise GatewayConfigError(
            f"{where}: protocol {protocol!r} is not supported by the embedded gateway (it proxies plain http "
            "and WebSocket upstreams); use an http:// url."
        )
    if not host:
        raise GatewayConfigError(f"{where}: no host; give a url such as http://producer:6789")
    if not PATH_RE.fullmatch(path):
        raise GatewayConfigError(f"{where}: path {path!r} has characters the embedded gateway does not accept")
    timeouts = {}
    for key in ("connect_timeout", "read_timeout", "write_timeout"):
        value = raw.get(key, KONG_DEFAULT_TIMEOUT_MS)
        if not isinstance(value, int) or value < 1:
            raise GatewayConfigError(f"{where}: {key} must be a positive number of milliseconds, not {value!r}")
        timeouts[key] = value
    port = 80 if port is None else port
    url = raw.get("url") or f"{protocol}://{host}:{port}{raw.get('path') or ''}"
    retries = raw.get("retries", 5)
    if not isinstance(retries, int) or retries < 0:
        raise GatewayConfigError(f"{where}: retries must be 0 or more, not {retries!r}")
    return Service(name, url, protocol, host, port, path, enabled=raw.get("enabled", True), retries=retries, **timeouts)


def _read_route(raw: dict, service: Service, taken_idents: set[str]) -> Route:
    name = raw.get("name") or raw.get("id") or f"{service.name}-route-{len(taken_idents) + 1}"
    where = f"route '{name}'"
    _reject_unknown(raw, _ROUTE_FIELDS, where)
    protocols = raw.get("protocols") or ["http", "https"]
    if not {"http", "ws"} & set(protocols):
        raise GatewayConfigError(
            f"{where}: protocols {protocols} do not include http; the embedded gateway listens for plain "
            "http (and WebSocket upgrades over it), so this route would never match: add 'http'."
        )
    if raw.get("path_handling", "v0") != "v0":
        raise GatewayConfigError(
            f"{where}: path_handling {raw['path_handling']!r} is not supported; the embedded gateway does "
            "Kong 3.x's default path handling, 'v0'."
        )
    paths = raw.get("paths") or ["/"]
    for path in paths:
        if path.startswith("~") and exact_path(path) is None:
            raise GatewayConfigError(
                f"{where}: path {path!r} is a regex path; the embedded gateway supports prefix paths and "
                "exact ones written '~/path$' only: use one of those, or the compose mode."
            )
        if not PATH_RE.fullmatch(request_path(path)):
            raise GatewayConfigError(
                f"{where}: path {path!r} has characters the embedded gateway does not accept "
                "(letters, digits and ._~!&,=:@/- are accepted)."
            )
    methods = [m.upper() for m in raw.get("methods") or []]
    hosts = raw.get("hosts") or []
    for method in methods:
        if not METHOD_RE.fullmatch(method):
            raise GatewayConfigError(f"{where}: method {method!r} is not an HTTP method name")
    for host in hosts:
        if not HOST_RE.fullmatch(host):
            raise GatewayConfigError(
                f"{where}: host {host!r} is not supported (host names and *-wildcards only, no port)"
            )
    ident = nginx_ident(name)
    while ident in taken_idents:
        ident += "_"  # route names that differ only in punctuation
    return Route(
        name=name,
        ident=ident,
        service=service,
        paths=paths,
        strip_path=raw.get("strip_path", True),
        preserve_host=raw.get("preserve_host", False),
        methods=methods,
        hosts=hosts,
        request_buffering=raw.get("request_buffering", True),
        response_buffering=raw.get("response_buffering"),
    )


def _attach_plugins(scoped_plugins: list[tuple[dict, str, str | None]], routes: list[Route]) -> None:
    """Give each route the plugins that run on it: route over service over global, as in Kong."""
    by_scope: dict[tuple[str, str | None], dict[str, Plugin]] = {}
    for raw, scope, scope_name in scoped_plugins:
        plugin = read_plugin(raw, scope, scope_name)
        if plugin is None:
            continue
        here = by_scope.setdefault((scope, scope_name), {})
        if plugin.name in here:
            raise plugin.error("configured twice at the same place; keep one")
        here[plugin.name] = plugin
    for route in routes:
        for scope in (("global", None), ("service", route.service.name), ("route", route.name)):
            route.plugins.update(by_scope.get(scope, {}))  # the more specific scope wins
        route.plugins = dict(sorted(route.plugins.items(), key=lambda item: -PLUGIN_PRIORITY[item[0]]))


def _read_consumer(raw: dict) -> Consumer:
    label = raw.get("username") or raw.get("custom_id")
    where = f"consumer '{label or raw.get('id')}'"
    _reject_unknown(raw, _CONSUMER_FIELDS, where)
    if not label:
        raise GatewayConfigError(f"{where}: give the consumer a username or a custom_id")
    if not HEADER_VALUE_RE.fullmatch(label) or "'" in label or "\\" in label:
        raise GatewayConfigError(f"{where}: username/custom_id must be printable ASCII without quotes")
    keys = []
    for credential in raw.get("keyauth_credentials") or []:
        _reject_unknown(credential, _CREDENTIAL_FIELDS, f"{where} keyauth_credentials")
        key = credential.get("key")
        if not isinstance(key, str) or not API_KEY_RE.fullmatch(key):
            raise GatewayConfigError(
                f"{where}: every keyauth_credentials entry needs a key of printable ASCII characters without "
                "spaces (the embedded gateway cannot generate keys)"
            )
        keys.append(key)
    return Consumer(label, raw.get("username"), raw.get("custom_id"), keys)


def _check_unique_keys(consumers: list[Consumer]) -> None:
    seen: dict[str, str] = {}
    for consumer in consumers:
        for key in consumer.keys:
            if key in seen:
                raise GatewayConfigError(
                    f"consumers '{seen[key]}' and '{consumer.label}' share a key-auth key; keys must be unique"
                )
            seen[key] = consumer.label


def _check_unique_paths(routes: list[Route]) -> None:
    seen: dict[str, str] = {}
    for route in routes:
        for path in map(request_path, route.paths):  # "/a" and "~/a$" both take the request /a
            if path in seen:
                raise GatewayConfigError(
                    f"routes '{seen[path]}' and '{route.name}' both use path {path!r}; the embedded gateway "
                    "needs distinct paths (it does not choose between routes by method or host)"
                )
            seen[path] = route.name


# --------------------------------------------------------------------------- routes_table


def routes_table(kong: dict, settings: Settings | None = None) -> list[dict]:
    """One row per route, for status tables and notebooks: where each path goes, through which plugins.

    An exact path ("~/produce-events$" in kong.yml) reads as the path a client uses ("/produce-events").
    The upstream is the service's targets (a Kong upstream's, when its host names one); with the
    embedded stack's ``settings``, the addresses the gateway really proxies to (labkit's own
    producer and consumer replicas on their ports), not kong.yml's Compose host.
    """
    return [
        {
            "route": route.name,
            "paths": [request_path(path) for path in route.paths],
            "service": route.service.name,
            "upstream": ", ".join(
                f"{route.service.protocol}://{address}{route.service.path if route.service.path != '/' else ''}"
                for address in service_addresses(route.service, settings)
            ),
            "plugins": list(route.plugins),
        }
        for route in read_gateway(kong).routes
    ]
