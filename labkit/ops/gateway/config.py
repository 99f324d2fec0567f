"""Reading kong.yml: the file, then its services, routes and consumers as pydantic models, resolved.

Each route gets the plugins that run on it (Kong's precedence: route over
service over global); the plugins' models are in :mod:`.plugins`, the
upstreams' in :mod:`.upstreams`. Anything the embedded gateway cannot do
faithfully raises GatewayConfigError, naming the entity, the field and its
path in the file (``services[0].routes[1].paths[0]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from labkit.ops.gateway.model import (
    API_KEY_RE,
    BOOKKEEPING,
    HEADER_VALUE_RE,
    HOST_RE,
    METHOD_RE,
    PATH_RE,
    PLUGIN_PRIORITY,
    Consumer,
    Gateway,
    GatewayConfigError,
    KongEntity,
    Plugin,
    Route,
    Service,
    exact_path,
    matching,
    nginx_ident,
    one_of,
    request_path,
)
from labkit.ops.gateway.plugins import USE_KONG, DisabledPlugin, PluginEntry, Reference, takes_http
from labkit.ops.gateway.upstreams import UpstreamEntry, read_upstreams, service_addresses
from labkit.settings import Settings

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


# --------------------------------------------------------------------------- kong.yml's entities


def _route_path(path: str) -> str:
    if path.startswith("~") and exact_path(path) is None:
        raise ValueError(f"path {path!r} is a regex path; the embedded gateway supports prefix paths and exact "
                         "ones written '~/path$' only: use one of those, or the compose mode")  # fmt: skip
    if not PATH_RE.fullmatch(request_path(path)):
        raise ValueError(f"path {path!r} has characters the embedded gateway does not accept "
                         "(letters, digits and ._~!&,=:@/- are accepted)")  # fmt: skip
    return path


def _consumer_label(label: str) -> str:
    if not HEADER_VALUE_RE.fullmatch(label) or "'" in label or "\\" in label:
        raise ValueError("username/custom_id must be printable ASCII without quotes")
    return label


_Milliseconds = Annotated[int, Field(strict=True, ge=1)]
_NOT_A_METHOD = "method {value!r} is not an HTTP method name"
_NOT_A_HOST = "host {value!r} is not supported (host names and *-wildcards only, no port)"
_NO_KEY = ("every keyauth_credentials entry needs a key of printable ASCII characters without spaces (the embedded "
           "gateway cannot generate keys)")  # fmt: skip


class _RouteEntry(KongEntity):
    name: str | None = None
    id: str | None = None  # routes and services are referred to by name or id
    service: Reference | None = None  # top-level routes name their service
    paths: list[Annotated[str, AfterValidator(_route_path)]] = ["/"]
    strip_path: bool = True
    preserve_host: bool = False
    methods: list[Annotated[str, AfterValidator(str.upper), matching(METHOD_RE, _NOT_A_METHOD)]] = []
    hosts: list[Annotated[str, matching(HOST_RE, _NOT_A_HOST)]] = []
    protocols: Annotated[list[str], AfterValidator(takes_http)] = ["http", "https"]
    path_handling: Annotated[str, one_of({"v0"}, "path_handling {value!r} is not supported; the embedded gateway "
                                         "does Kong 3.x's default path handling, 'v0'")] = "v0"  # fmt: skip
    request_buffering: bool = True
    response_buffering: bool | None = None
    plugins: list[PluginEntry] = []
    IGNORED = BOOKKEEPING | {"regex_priority", "https_redirect_status_code"}  # only Kong's router reads them


class _ServiceEntry(KongEntity):
    name: str | None = None
    id: str | None = None
    url: str | None = None  # or protocol, host, port and path
    protocol: str = "http"
    host: str | None = None
    port: int = 80
    path: str = "/"
    enabled: bool = True
    retries: Annotated[int, Field(strict=True, ge=0)] = 5
    connect_timeout: _Milliseconds = KONG_DEFAULT_TIMEOUT_MS
    read_timeout: _Milliseconds = KONG_DEFAULT_TIMEOUT_MS
    write_timeout: _Milliseconds = KONG_DEFAULT_TIMEOUT_MS
    routes: list[_RouteEntry] = []
    plugins: list[PluginEntry] = []
    IGNORED = BOOKKEEPING

    @model_validator(mode="after")
    def _reachable(self) -> _ServiceEntry:
        if not self.name and not self.id:
            # Kong would make up an id; the embedded gateway names the service's nginx upstream after it.
            raise ValueError("give the service a name")
        if self.url:
            parts = urlsplit(self.url)
            self.protocol, self.host, self.path = parts.scheme, parts.hostname, parts.path or "/"
            self.port = 80 if parts.port is None else parts.port
        else:
            self.url = f"{self.protocol}://{self.host}:{self.port}{self.path if self.path != '/' else ''}"
        if self.protocol not in ("http", "ws"):
            raise ValueError(f"protocol {self.protocol!r} is not supported by the embedded gateway (it proxies plain "
                             "http and WebSocket upstreams); use an http:// url")  # fmt: skip
        if not self.host:
            raise ValueError("no host; give a url such as http://producer:6789")
        if not PATH_RE.fullmatch(self.path):
            raise ValueError(f"path {self.path!r} has characters the embedded gateway does not accept")
        return self


class _Credential(KongEntity):
    key: Annotated[str, Field(strict=True), matching(API_KEY_RE, _NO_KEY)]
    IGNORED = BOOKKEEPING | {"id", "consumer"}


class _ConsumerEntry(KongEntity):
    username: Annotated[str, AfterValidator(_consumer_label)] | None = None
    custom_id: Annotated[str, AfterValidator(_consumer_label)] | None = None
    keyauth_credentials: list[_Credential] = []
    IGNORED = BOOKKEEPING | {"id"}

    @model_validator(mode="after")
    def _named(self) -> _ConsumerEntry:
        if not self.username and not self.custom_id:
            raise ValueError("give the consumer a username or a custom_id")
        return self

    @property
    def label(self) -> str:
        """The username, else the custom_id (:meth:`_named` makes sure there is one)."""
        label = self.username or self.custom_id
        assert label
        return label


class _KongFile(KongEntity):
    # _format_version is checked by load_kong_config; the others are Kong's notes.
    IGNORED = frozenset({"_format_version", "_transform", "_comment", "_ignore", "_info"})
    services: list[_ServiceEntry] = []
    routes: list[_RouteEntry] = []
    plugins: list[PluginEntry] = []
    consumers: list[_ConsumerEntry] = []
    upstreams: list[UpstreamEntry] = []


# --------------------------------------------------------------------------- refusals, for people

_ENTITY_KINDS = {"services": "service", "routes": "route", "plugins": "plugin", "consumers": "consumer",
                 "upstreams": "upstream"}  # fmt: skip


def _name_of(ref: Any) -> str | None:
    """A reference to a service, route or consumer: a name or id, or {name:} / {id:}."""
    if isinstance(ref, dict):
        return ref.get("name") or ref.get("id")
    return ref


def _entity(kind: str, raw: dict, scope: str) -> str:
    """How a refusal names an entity: "route 'produce-events'", "plugin 'cors' (global)"."""
    name = raw.get("name") or raw.get("username") or raw.get("custom_id") or raw.get("id")
    if kind != "plugin":
        return f"{kind} '{name}'" if name else f"a {kind} without a name"
    if raw.get("route") or raw.get("service"):  # a top-level plugin scoped by reference
        scope = f"route '{_name_of(raw['route'])}'" if raw.get("route") else f"service '{_name_of(raw['service'])}'"
    return f"plugin '{name}' ({scope})"


def _refusal(error: ErrorDetails, kong: dict) -> str:
    """One pydantic error as a sentence: which entity, what is wrong, what to do, where in the file."""
    path, where, scope, field = "", "kong.yml top level", "global", ""
    node: object = kong  # where the error's location has led in the file: a mapping, a list or a value
    for index, step in enumerate(error["loc"]):
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            path, node = f"{path}[{step}]", node[step]
            kind = _ENTITY_KINDS.get(str(error["loc"][index - 1]))
            if kind and isinstance(node, dict):
                where = _entity(kind, node, scope)
                scope = where if kind in ("service", "route") else scope
        elif isinstance(node, dict) and (step in node or error["type"] == "missing"):
            path, node, field = f"{path}.{step}" if path else str(step), node.get(step), str(step)
        # Other steps name a model inside a union (a plugin's name, "str"): not in the file.
    problems = {
        "extra_forbidden": f"field '{field}' is not supported by the embedded gateway; remove it, {USE_KONG}",
        "missing": f"field '{field}' is missing; add it",
        "value_error": str(error.get("ctx", {}).get("error")),
        "unsupported_plugin": error["msg"],
    }
    problem = problems.get(error["type"]) or f"'{field}' is {repr(error['input'])[:80]}: {error['msg']}; correct it"
    return f"{where}: {problem.rstrip('.')} (at {path or 'the top level'} in kong.yml)."


# --------------------------------------------------------------------------- resolving


def read_gateway(kong: dict) -> Gateway:
    """Kong's entities, checked, with each route's plugins resolved as Kong would."""
    try:
        parsed = _KongFile.model_validate(kong)
    except ValidationError as exc:
        raise GatewayConfigError("\n".join(_refusal(error, kong) for error in exc.errors())) from None
    services: dict[str, Service] = {}  # by name and by id
    routes: dict[str, Route] = {}  # by name and by id
    ordered_routes: list[Route] = []
    scoped_plugins: list[tuple[Any, str, str | None]] = []  # (plugin entry, scope, route or service name)

    def add_route(entry: _RouteEntry, service: Service) -> None:
        route = _resolve_route(entry, service, {r.ident for r in ordered_routes})
        ordered_routes.append(route)
        routes.update(dict.fromkeys(filter(None, (entry.name, entry.id)), route))
        scoped_plugins.extend((plugin, "route", route.name) for plugin in entry.plugins)

    upstreams = read_upstreams(parsed.upstreams)
    for entry in parsed.services:
        name = entry.name or entry.id
        assert name and entry.url and entry.host  # _ServiceEntry._reachable refuses a service without them
        service = Service(
            name, entry.url, entry.protocol, entry.host, entry.port, entry.path,
            entry.connect_timeout, entry.read_timeout, entry.write_timeout, entry.enabled, entry.retries,
            upstream=upstreams.get(entry.host),  # Kong: a service whose host names an upstream is balanced
        )  # fmt: skip
        services.update(dict.fromkeys(filter(None, (entry.name, entry.id)), service))
        scoped_plugins.extend((plugin, "service", service.name) for plugin in entry.plugins)
        for route_entry in entry.routes:
            add_route(route_entry, service)
    for route_entry in parsed.routes:
        ref = _name_of(route_entry.service)
        if ref not in services:
            raise GatewayConfigError(f"route '{route_entry.name}': service {ref!r} is not defined in kong.yml")
        add_route(route_entry, services[ref])
    for plugin in parsed.plugins:
        if isinstance(plugin, DisabledPlugin):
            continue
        route_ref, service_ref = _name_of(plugin.route), _name_of(plugin.service)
        if route_ref and service_ref:
            raise GatewayConfigError(
                f"plugin '{plugin.name}' is scoped to route {route_ref!r} and service {service_ref!r} at "
                "once; the embedded gateway supports one scope: attach it to the route."
            )
        if route_ref:
            if route_ref not in routes:
                raise GatewayConfigError(f"plugin '{plugin.name}': route {route_ref!r} is not defined")
            scoped_plugins.append((plugin, "route", routes[route_ref].name))
        elif service_ref:
            if service_ref not in services:
                raise GatewayConfigError(f"plugin '{plugin.name}': service {service_ref!r} is not defined")
            scoped_plugins.append((plugin, "service", services[service_ref].name))
        else:
            scoped_plugins.append((plugin, "global", None))

    live_routes = [route for route in ordered_routes if route.service.enabled]
    _attach_plugins(scoped_plugins, live_routes)
    consumers = [
        Consumer(entry.label, entry.username, entry.custom_id,
                 [credential.key for credential in entry.keyauth_credentials])
        for entry in parsed.consumers
    ]  # fmt: skip
    _check_unique_keys(consumers)
    _check_unique_paths(live_routes)
    return Gateway(live_routes, consumers)


def _resolve_route(entry: _RouteEntry, service: Service, taken_idents: set[str]) -> Route:
    name = entry.name or entry.id or f"{service.name}-route-{len(taken_idents) + 1}"
    ident = nginx_ident(name)
    while ident in taken_idents:
        ident += "_"  # route names that differ only in punctuation
    return Route(
        name=name,
        ident=ident,
        service=service,
        paths=entry.paths,
        strip_path=entry.strip_path,
        preserve_host=entry.preserve_host,
        methods=entry.methods,
        hosts=entry.hosts,
        request_buffering=entry.request_buffering,
        response_buffering=entry.response_buffering,
    )


def _attach_plugins(scoped_plugins: list[tuple[Any, str, str | None]], routes: list[Route]) -> None:
    """Give each route the plugins that run on it: route over service over global, as in Kong."""
    by_scope: dict[tuple[str, str | None], dict[str, Plugin]] = {}
    for entry, scope, scope_name in scoped_plugins:
        if isinstance(entry, DisabledPlugin):
            continue  # Kong does not run a disabled plugin either
        ident = f"{scope}_{nginx_ident(scope_name)}" if scope_name else "global"
        where = f"{scope} '{scope_name}'" if scope_name else "global"
        plugin = Plugin(entry.name, entry.config.model_dump(), ident, where)
        here = by_scope.setdefault((scope, scope_name), {})
        if plugin.name in here:
            raise plugin.error("configured twice at the same place; keep one")
        here[plugin.name] = plugin
    for route in routes:
        for place in (("global", None), ("service", route.service.name), ("route", route.name)):
            route.plugins.update(by_scope.get(place, {}))  # the more specific scope wins
        route.plugins = dict(sorted(route.plugins.items(), key=lambda item: -PLUGIN_PRIORITY[item[0]]))


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
