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
    ValidationInfo,
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

_KEY_AUTH_REFUSALS = {
    "key_in_body": "key_in_body: true is not supported (nginx does not read request bodies here); "
                   "send the key in a header or the query string, and set key_in_body: false",
    "anonymous": "anonymous is not supported: every request needs a valid key; remove anonymous",
}  # fmt: skip


class _KeyAuthConfig(KongEntity):
    """key-auth's config: where the key is looked for (header, then query string), Kong's defaults."""

    key_names: list[_HeaderName] = ["apikey"]
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    hide_credentials: bool = False
    anonymous: str | None = None
    run_on_preflight: bool = True
    realm: str | None = None
    identity_realms: list[dict[str, Any]] | None = None

    @field_validator("key_in_body", "anonymous")
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise ValueError(_KEY_AUTH_REFUSALS[info.field_name])
        return value

    @field_validator("realm")
    @classmethod
    def _quotable_realm(cls, realm: str) -> str:
        if not HEADER_VALUE_RE.fullmatch(realm) or set(realm) & set("\"'\\"):
            raise ValueError(f"realm {realm!r} must be printable ASCII without quotes or backslashes")
        return realm

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

    second: Annotated[int, Field(strict=True, ge=1)] | None = None
    minute: Annotated[int, Field(strict=True, ge=1)] | None = None
    hour: Any = None
    day: Any = None
    month: Any = None
    year: Any = None
    limit_by: str = "consumer"
    header_name: _HeaderName | None = None
    policy: str = "local"
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    error_code: Annotated[int, Field(ge=400, le=599)] = 429
    error_message: str = "API rate limit exceeded"
    sync_rate: int = -1
    # Read only by limit_by: path and the redis policy, which are refused; accepted so that exported configs load.
    IGNORED = frozenset({"path", "redis", "redis_host", "redis_port", "redis_password", "redis_username", "redis_ssl",
                         "redis_ssl_verify", "redis_server_name", "redis_timeout", "redis_database"})

    @field_validator("hour", "day", "month", "year")
    @classmethod
    def _window_too_long(cls, value: Any, info: ValidationInfo) -> None:
        raise ValueError(
            f"field '{info.field_name}' is not supported: nginx's limit_req counts per second or per minute "
            "only. Use 'second' or 'minute', or the compose mode where Kong counts longer windows"
        )

    @field_validator("sync_rate")
    @classmethod
    def _redis_only(cls, sync_rate: int) -> int:
        if sync_rate != -1:
            raise ValueError("sync_rate only applies to the redis policy; remove it")
        return sync_rate

    @field_validator("policy")
    @classmethod
    def _local(cls, policy: str) -> str:
        if policy != "local":
            raise ValueError(f"policy {policy!r} is not supported: the embedded gateway is one nginx, so counters "
                             "are local. Set policy: local")  # fmt: skip
        return policy

    @field_validator("limit_by")
    @classmethod
    def _countable(cls, limit_by: str) -> str:
        if limit_by not in ("consumer", "credential", "ip", "service", "header"):
            raise ValueError(f"limit_by {limit_by!r} is not supported; use consumer, credential, ip, service or header")
        return limit_by

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
    allow_origin_absent: bool = True

    @field_validator("allow_origin_absent")
    @classmethod
    def _headers_always(cls, allow_origin_absent: bool) -> bool:
        if not allow_origin_absent:
            raise ValueError("allow_origin_absent: false is not supported; remove it (Kong's default, true, sends "
                             "the CORS headers whether or not the request has an Origin)")  # fmt: skip
        return allow_origin_absent


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
