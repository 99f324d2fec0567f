"""Reading each plugin of kong.yml: key-auth, rate-limiting and cors, with Kong's defaults.

A plugin that the embedded gateway cannot run as Kong would, or a config field
it does not understand, is refused with GatewayConfigError rather than left out.
"""

from __future__ import annotations

import re
from typing import Any

from labkit.ops.gateway.model import (
    HEADER_NAME_RE,
    HEADER_VALUE_RE,
    LITERAL_ORIGIN_RE,
    PLUGIN_PRIORITY,
    GatewayConfigError,
    nginx_ident,
    Plugin,
)

_PLUGIN_FIELDS = {"name", "config", "enabled", "protocols", "tags", "id", "instance_name", "run_on",
                  "route", "service", "created_at", "updated_at"}  # fmt: skip


def read_plugin(raw: dict, scope: str, scope_name: str | None) -> Plugin | None:
    """One plugin entry of kong.yml, checked and with Kong's defaults; None when it is disabled."""
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
    plugin = Plugin(name, {}, f"{scope}_{nginx_ident(scope_name)}" if scope_name else "global", where)
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


def _with_defaults(plugin: Plugin, config: dict, defaults: dict) -> dict:
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


def _read_key_auth(plugin: Plugin, config: dict) -> dict:
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
        if not HEADER_NAME_RE.fullmatch(key_name):
            raise plugin.error(f"key name {key_name!r} is not a header name (letters, digits, '-' and '_')")
    realm = config["realm"]
    if realm is not None and (not HEADER_VALUE_RE.fullmatch(realm) or set(realm) & set("\"'\\")):
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


def _read_rate_limiting(plugin: Plugin, config: dict) -> dict:
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
    if config["limit_by"] == "header" and not HEADER_NAME_RE.fullmatch(config["header_name"] or ""):
        raise plugin.error("limit_by: header needs header_name (a header name)")
    code = config["error_code"]
    if not isinstance(code, int) or not 400 <= code <= 599:
        raise plugin.error(f"error_code {code!r} is not supported: nginx answers a limit with a 4xx or 5xx code")
    return config


_CORS_DEFAULTS: dict[str, Any] = {
    "origins": [], "methods": None, "headers": None, "exposed_headers": None, "credentials": False,
    "max_age": None, "preflight_continue": False, "private_network": False, "allow_origin_absent": True,
}  # fmt: skip


def _read_cors(plugin: Plugin, config: dict) -> dict:
    config = _with_defaults(plugin, config, _CORS_DEFAULTS)
    if not config["allow_origin_absent"]:
        raise plugin.error(
            "allow_origin_absent: false is not supported; remove it (Kong's default, true, sends the CORS "
            "headers whether or not the request has an Origin)"
        )
    for origin in config["origins"]:
        if origin == "*" or LITERAL_ORIGIN_RE.fullmatch(origin):
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
            if not HEADER_NAME_RE.fullmatch(value):
                raise plugin.error(f"{key} entry {value!r} is not a method or header name")
    if config["max_age"] is not None and (not isinstance(config["max_age"], int) or config["max_age"] < 0):
        raise plugin.error(f"max_age must be a whole number of seconds, not {config['max_age']!r}")
    return config


_PLUGIN_READERS = {"key-auth": _read_key_auth, "rate-limiting": _read_rate_limiting, "cors": _read_cors}
