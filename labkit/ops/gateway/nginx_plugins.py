"""What each plugin adds to the nginx configuration: http-level maps, and lines in a route's location.

key-auth, rate-limiting and cors, each in Kong's terms (status codes, headers,
JSON bodies); :mod:`.nginx` calls them through PLUGIN_MAPS and PLUGIN_LOCATION.
"""

from __future__ import annotations

import math

from labkit.ops.gateway.model import LITERAL_ORIGIN_RE, Gateway, Plugin, Route
from labkit.ops.gateway.nginx_text import (
    CORS_DEFAULT_METHODS,
    ORIGIN_NOT_ALLOWED,
    block,
    comment,
    error_body,
    quote,
    regex_literal,
)
from labkit.ops.gateway.plugins import RATE_PERIODS

# ---- key-auth


def _key_auth_maps(plugin: Plugin, gateway: Gateway) -> list[str]:
    """Where the key is: for each key name, the header, then the query string (Kong's order)."""
    config, base = plugin.config, f"lk_key_auth_{plugin.ident}"
    sources = []
    for key_name in config["key_names"]:
        if config["key_in_header"]:
            sources.append(("header", key_name))
        if config["key_in_query"]:
            sources.append(("query", key_name))
    lines = comment(
        f"key-auth ({plugin.where}): the API key, from "
        + ", then ".join(f"the {kind} '{name}'" for kind, name in sources)
        + "."
    )
    for index, (kind, key_name) in enumerate(sources):
        var = f"${base}_key" if index == 0 else f"${base}_key_{index}"
        fallback = f"${base}_key_{index + 1}" if index + 1 < len(sources) else "''"
        if kind == "header":
            header_var = "$http_" + key_name.lower().replace("-", "_")
            lines += block(f"map {header_var} {var}", [f"''      {fallback};", f"default {header_var};"])
        else:
            pattern = quote(f"~(?:^|&){regex_literal(key_name)}=(?<lk_key>[^&]+)")
            lines += block(f"map $args {var}", [f"{pattern} $lk_key;", f"default {fallback};"])
    if config["key_in_query"]:
        twice = "|".join(f"{regex_literal(n)}=.*&{regex_literal(n)}=" for n in config["key_names"])
        lines += comment("Kong refuses a key given twice in the query string.")
        lines += block(f"map $args ${base}_duplicate", ["default 0;", f"{quote(f'~(?:^|&)(?:{twice})')} 1;"])
    if config["hide_credentials"] and config["key_in_query"]:
        lines += comment("hide_credentials: the query string without the key, for the service.")
        previous = "$args"
        for index, key_name in enumerate(config["key_names"]):
            var = f"${base}_args" if index == len(config["key_names"]) - 1 else f"${base}_args_{index}"
            pattern = quote(f"~^(?<lk_before>(?:[^&]*&)*?){regex_literal(key_name)}=[^&]*&?(?<lk_after>.*)$")
            lines += block(f"map {previous} {var}", [f'{pattern} "$lk_before$lk_after";', f"default {previous};"])
            previous = var
    return lines


def _key_auth_location(plugin: Plugin, route: Route) -> list[str]:
    config, base = plugin.config, f"lk_key_auth_{plugin.ident}"
    if not config["run_on_preflight"] and not _answers_preflight(route):
        raise plugin.error(
            "run_on_preflight: false is only supported where a cors plugin answers preflight requests "
            "(preflight_continue: false), which then never reach key-auth; remove run_on_preflight"
        )
    lines = [
        *comment(f"key-auth ({plugin.where}); a refusal is answered where it is counted (nginx_limits.py)"),
        f"set $lk_api_key ${base}_key;",
    ]
    if config["key_in_query"]:
        lines += block(f"if (${base}_duplicate)", _key_auth_refusal("duplicate", route))
    lines += block('if ($lk_api_key = "")', _key_auth_refusal("missing", route))
    lines += block('if ($lk_consumer = "")', _key_auth_refusal("invalid", route))
    if config["hide_credentials"] and config["key_in_query"]:
        lines.append(f"set $args ${base}_args;")
    return lines


def key_auth_failed_uri(route: Route) -> str:
    """The internal location where this route's key-auth refusals are counted and answered."""
    return f"/.lk-key-auth-failed/{route.ident}"


def _key_auth_refusal(failure: str, route: Route) -> list[str]:
    return [f"set $lk_key_auth_failure {failure};", f"rewrite ^ {key_auth_failed_uri(route)} last;"]


def key_auth_proxy_headers(plugin: Plugin, gateway: Gateway) -> list[str]:
    """What key-auth tells the service, as Kong does: the consumer's headers, the key hidden if asked."""
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


def _rate_limiting_maps(plugin: Plugin, gateway: Gateway) -> list[str]:
    config = plugin.config
    key = {
        "consumer": "$lk_rate_by_consumer",
        "credential": "$lk_rate_by_credential",
        "ip": "$binary_remote_addr",
        "service": "service:$lk_service",
        "header": f"$lk_rate_by_header_{plugin.ident}",
    }[config["limit_by"]]
    lines = comment(
        f"""
rate-limiting ({plugin.where}): {_limits_text(config)} by {config["limit_by"]}, counted per route as Kong does.
A token bucket (nginx limit_req) approximating Kong's fixed windows: a full bucket lets
the whole limit through at once (burst = limit - 1, nodelay), then it refills steadily over the
period. For a WebSocket, a request is a connection (the upgrade), not a message.
"""
    )
    if config["limit_by"] == "header":
        header_var = "$http_" + config["header_name"].lower().replace("-", "_")
        lines += block(f"map {header_var} {key}", ["''      ip:$remote_addr;", f"default header:{header_var};"])
    for route in gateway.routes:
        if route.plugins.get("rate-limiting") is plugin:
            for period, limit in _limits(config).items():
                rate = f"{limit}r/s" if period == "second" else f"{limit}r/m"
                lines.append(f"limit_req_zone {key} zone={_rate_zone(route, period)}:1m rate={rate};")
    return lines


def _rate_zone(route: Route, period: str) -> str:
    return f"lk_rate_{route.ident}_{period}"


def _limits(config: dict) -> dict[str, int]:
    return {period: config[period] for period in RATE_PERIODS if config[period] is not None}


def _limits_text(config: dict) -> str:
    return " and ".join(f"{limit} per {period}" for period, limit in _limits(config).items())


def _rate_limiting_location(plugin: Plugin, route: Route) -> list[str]:
    config = plugin.config
    lines = comment(f"rate-limiting ({plugin.where}): {_limits_text(config)}")
    if config["limit_by"] == "service":
        lines.append(f"set $lk_service {quote(route.service.name)};")
    for period, limit in _limits(config).items():
        lines.append(f"limit_req zone={_rate_zone(route, period)} burst={limit - 1} nodelay;")
    lines += [
        f"limit_req_status {config['error_code']};",
        "limit_req_log_level info;  # a refusal is an answer, not an error worth logging",
        f"error_page {config['error_code']} = @lk_rate_limited_{route.ident};",
    ]
    return lines


def rate_limit_headers(plugin: Plugin, limited: bool) -> list[str]:
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


def rate_limited_location(plugin: Plugin, route: Route) -> list[str]:
    """The internal location that answers a request over the route's limit: Kong's code, message and headers."""
    config = plugin.config
    # The bucket gains one request every period/limit seconds: that is when to come back.
    retry_after = max(math.ceil(RATE_PERIODS[p] / limit) for p, limit in _limits(config).items())
    body = [
        *cors_headers(route),
        *rate_limit_headers(plugin, limited=True),
        *([] if config["hide_client_headers"] else [f"add_header RateLimit-Reset {retry_after} always;"]),
        f"add_header Retry-After {retry_after} always;",
        f"return {config['error_code']} {error_body(config['error_message'])};",
    ]
    return block(f"location @lk_rate_limited_{route.ident}", body)


# ---- cors


def _cors_origin_entries(config: dict) -> list[str]:
    """Map lines matching the allowed origins, the way Kong compares them."""
    lines = []
    for origin in config["origins"]:
        if LITERAL_ORIGIN_RE.fullmatch(origin):
            lines.append(f"{_normalize_origin(origin)} 1;")
        else:
            # Kong anchors a regex origin at both ends (it strips a leading ^ and adds a $).
            regex = origin[1:] if origin.startswith("^") else origin
            regex = regex if regex.endswith("$") else regex + "$"
            lines.append(f"{quote('~^(?:' + regex + ')')} 1;")
    return lines


def _normalize_origin(origin: str) -> str:
    """Kong drops a default port from an origin before comparing (http :80, https :443)."""
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def _allows_all(config: dict) -> bool:
    return not config["origins"] or "*" in config["origins"]


def _cors_maps(plugin: Plugin, gateway: Gateway) -> list[str]:
    config, base = plugin.config, f"lk_cors_{plugin.ident}"
    lines = comment(f"cors ({plugin.where})")
    if _allows_all(config):
        if config["credentials"]:
            # Credentials cannot go with "*": Kong answers with the request's own origin instead.
            lines += block(f"map $http_origin ${base}_allow_origin", ["''      *;", "default $http_origin;"])
        return lines
    lines += comment(
        """
Origins allowed: literal entries compare whole (after dropping a default port), entries with
other characters are regexes, anchored at both ends as Kong does.
"""
    )
    lines += block(f"map $http_origin ${base}_origin_allowed", ["default 0;", *_cors_origin_entries(config)])
    if not _single_literal_origin(config):
        lines += block(f"map ${base}_origin_allowed ${base}_allow_origin", ["default '';", "1       $http_origin;"])
    lines += comment(
        """
labkit's rule, stricter than Kong: browsers do not apply CORS to WebSockets, so a WebSocket
upgrade from an origin not allowed above is refused. Requests without Origin (CLI clients) pass.
"""
    )
    lines += block(
        f'map "$lk_websocket_upgrade:$lk_has_origin:${base}_origin_allowed" ${base}_refused',
        ["default 0;", "1:1:0   1;"],
    )
    if config["private_network"]:
        lines += block(
            f"map $http_access_control_request_private_network ${base}_private_network",
            ["default '';", "true    true;"],
        )
    return lines


def _single_literal_origin(config: dict) -> str | None:
    origins = config["origins"]
    if len(origins) == 1 and LITERAL_ORIGIN_RE.fullmatch(origins[0]):
        return origins[0]  # Kong sends this one origin back whatever the request's origin
    return None


def _cors_origin_headers(plugin: Plugin) -> list[str]:
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


def cors_headers(route: Route) -> list[str]:
    """The CORS headers of every answer on this route except preflights (Kong's header_filter)."""
    plugin = route.plugins.get("cors")
    if plugin is None:
        return []
    config = plugin.config
    lines = _cors_origin_headers(plugin)
    if config["exposed_headers"]:
        lines.append(f"add_header Access-Control-Expose-Headers {','.join(config['exposed_headers'])} always;")
    return lines


def _answers_preflight(route: Route) -> bool:
    plugin = route.plugins.get("cors")
    return plugin is not None and not plugin.config["preflight_continue"]


def _cors_location(plugin: Plugin, route: Route) -> list[str]:
    config, base = plugin.config, f"lk_cors_{plugin.ident}"
    lines = comment(f"cors ({plugin.where})")
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
        lines += comment("A preflight request is answered here, before any other plugin, as Kong does.")
        lines += block("if ($lk_cors_preflight)", [*preflight, "return 200;"])
    if not _allows_all(config):
        lines += block(f"if (${base}_refused)", [f"return 403 {error_body(ORIGIN_NOT_ALLOWED)};"])
    return lines


# What each plugin adds at http level (maps), and inside a route's location; :mod:`.nginx` calls both.
PLUGIN_MAPS = {"key-auth": _key_auth_maps, "rate-limiting": _rate_limiting_maps, "cors": _cors_maps}
PLUGIN_LOCATION = {"cors": _cors_location, "key-auth": _key_auth_location, "rate-limiting": _rate_limiting_location}
