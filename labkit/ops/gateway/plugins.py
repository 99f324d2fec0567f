"""kong.yml's plugins as pydantic models: key-auth, rate-limiting and cors, with Kong's defaults.

A plugin that the embedded gateway cannot run as Kong would, or a config field
it does not understand, is refused (:mod:`.config` turns the refusal into
GatewayConfigError) rather than left out. A disabled plugin is not read at all,
since Kong does not run it either.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from labkit.ops.gateway.model import (
    BOOKKEEPING,
    HEADER_NAME_RE,
    HEADER_VALUE_RE,
    LITERAL_ORIGIN_RE,
    PLUGIN_PRIORITY,
    KongEntity,
    matching,
    one_of,
    refusing,
)

#: The rate-limiting windows nginx's limit_req can count, in seconds.
RATE_PERIODS = {"second": 1, "minute": 60}

#: What the compose mode offers for anything the embedded gateway refuses.
USE_KONG = "or run the compose mode where Kong itself reads kong.yml"

#: A reference to a service, route or consumer: its name or id, or {name: ...} / {id: ...}.
Reference = str | dict[str, str]


def takes_http(protocols: list[str] | None) -> list[str] | None:
    """Refuse protocols without http: the embedded gateway listens for http (and WebSocket upgrades) only."""
    if protocols is not None and not {"http", "ws"} & set(protocols):
        raise ValueError(f"protocols {protocols} exclude http, so on the embedded gateway this never runs; add 'http'")
    return protocols


_HeaderName = Annotated[str, matching(HEADER_NAME_RE, "{value!r} is not a header name (letters, digits, '-' and '_')")]
_Limit = Annotated[int, Field(strict=True, ge=1)]


def _longer_window(period: str) -> AfterValidator:
    return one_of((), f"field '{period}' is not supported: nginx's limit_req counts per second or per minute only. "
                      "Use 'second' or 'minute', or the compose mode where Kong counts longer windows")  # fmt: skip


class _KeyAuthConfig(KongEntity):
    """key-auth's config: where the key is looked for (header, then query string), Kong's defaults."""

    key_names: list[_HeaderName] = ["apikey"]
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: Annotated[bool, one_of({False}, "key_in_body: true is not supported (nginx does not read request "
                                        "bodies here); send the key in a header or the query string, and set "
                                        "key_in_body: false")] = False  # fmt: skip
    hide_credentials: bool = False
    anonymous: Annotated[str, one_of((), "anonymous is not supported: every request needs a valid key; "
                                         "remove anonymous")] | None = None  # fmt: skip
    run_on_preflight: bool = True
    realm: Annotated[str, refusing(
        lambda realm: HEADER_VALUE_RE.fullmatch(realm) and not set(realm) & set("\"'\\"),
        "realm {value!r} must be printable ASCII without quotes or backslashes")] | None = None
    identity_realms: list[dict[str, Any]] | None = None

    @field_validator("identity_realms")
    @classmethod
    def _konnect_only(cls, realms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(realm.get("scope") != "cp" for realm in realms):
            raise ValueError("identity_realms other than {scope: cp} (Konnect) are not supported; remove them")
        return realms

    @model_validator(mode="after")
    def _key_somewhere(self) -> _KeyAuthConfig:
        if not self.key_in_header and not self.key_in_query:
            raise ValueError("key_in_header and key_in_query are both false: no key could ever be found")
        return self


class _RateLimitingConfig(KongEntity):
    """rate-limiting's config, policy local, per second or per minute (nginx's limit_req), Kong's defaults."""

    second: _Limit | None = None
    minute: _Limit | None = None
    hour: Annotated[Any, _longer_window("hour")] = None
    day: Annotated[Any, _longer_window("day")] = None
    month: Annotated[Any, _longer_window("month")] = None
    year: Annotated[Any, _longer_window("year")] = None
    limit_by: Annotated[str, one_of({"consumer", "credential", "ip", "service", "header"}, "limit_by {value!r} is not "
                                    "supported; use consumer, credential, ip, service or header")] = "consumer"
    header_name: _HeaderName | None = None
    policy: Annotated[str, one_of({"local"}, "policy {value!r} is not supported: the embedded gateway is one nginx, "
                                  "so counters are local. Set policy: local")] = "local"
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    error_code: Annotated[int, Field(ge=400, le=599)] = 429
    error_message: str = "API rate limit exceeded"
    sync_rate: Annotated[int, one_of({-1}, "sync_rate only applies to the redis policy; remove it")] = -1
    # Read only by limit_by: path and the redis policy, which are refused; accepted so that exported configs load.
    IGNORED = frozenset({"path", "redis", "redis_host", "redis_port", "redis_password", "redis_username", "redis_ssl",
                         "redis_ssl_verify", "redis_server_name", "redis_timeout", "redis_database"})

    @model_validator(mode="after")
    def _complete(self) -> _RateLimitingConfig:
        if self.second is None and self.minute is None:
            raise ValueError("set a limit: 'second' or 'minute'")
        if self.limit_by == "header" and not self.header_name:
            raise ValueError("limit_by: header needs header_name (a header name)")
        return self


def _origin(value: str) -> str:
    """A cors origin: literal, '*', or a regex that Kong and nginx both match against the whole origin."""
    if value == "*" or LITERAL_ORIGIN_RE.fullmatch(value):
        return value
    if ":" not in value:
        raise ValueError(
            f"origin {value!r} is a regex without ':', which Kong matches against the host alone; the "
            "embedded gateway matches regexes against the whole origin: write it with the scheme, "
            r"e.g. 'https://([a-z]+\.)?example\.com'"
        )
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"origin {value!r} is not a valid regex: {exc}") from None
    return value


class _CorsConfig(KongEntity):
    """cors's config, with Kong's defaults; allow_origin_absent must stay true."""

    origins: list[Annotated[str, AfterValidator(_origin)]] = []
    methods: list[_HeaderName] | None = None
    headers: list[_HeaderName] | None = None
    exposed_headers: list[_HeaderName] | None = None
    credentials: bool = False
    max_age: Annotated[int, Field(ge=0)] | None = None
    preflight_continue: bool = False
    private_network: bool = False
    allow_origin_absent: Annotated[bool, one_of({True}, "allow_origin_absent: false is not supported; remove it "
                                                "(Kong's default, true, sends the CORS headers whether or not the "
                                                "request has an Origin)")] = True  # fmt: skip


class _PluginEntry(KongEntity):
    """The fields of every plugin entry, whatever the plugin."""

    name: str
    enabled: bool = True
    protocols: Annotated[list[str] | None, AfterValidator(takes_http)] = None
    route: Reference | None = None
    service: Reference | None = None
    IGNORED = BOOKKEEPING | {"id", "instance_name", "run_on"}


class _KeyAuth(_PluginEntry):
    config: _KeyAuthConfig = _KeyAuthConfig()


class _RateLimiting(_PluginEntry):
    config: _RateLimitingConfig = Field(default_factory=dict, validate_default=True)  # no limit given: refused


class _Cors(_PluginEntry):
    config: _CorsConfig = _CorsConfig()


class DisabledPlugin(BaseModel):
    """A plugin with ``enabled: false``: Kong does not run it, so it is neither read nor refused."""

    model_config = ConfigDict(extra="allow")
    enabled: Literal[False]


def _plugin_kind(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return None
    return "disabled" if raw.get("enabled", True) is False else raw.get("name")


#: A plugin entry of kong.yml, read by the model of its name; any other name is refused (error type
#: "unsupported_plugin"), never left out.
PluginEntry = Annotated[
    Annotated[_KeyAuth, Tag("key-auth")]
    | Annotated[_RateLimiting, Tag("rate-limiting")]
    | Annotated[_Cors, Tag("cors")]
    | Annotated[DisabledPlugin, Tag("disabled")],
    Discriminator(
        _plugin_kind,
        custom_error_type="unsupported_plugin",
        custom_error_message=(
            f"not supported by the embedded gateway, which renders only {', '.join(sorted(PLUGIN_PRIORITY))}; it is "
            f"refused rather than left out. Remove it, {USE_KONG}."
        ),
    ),
]
