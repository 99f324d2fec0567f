"""Kong's model as the embedded gateway holds it: its entities, limits and the one error it raises.

Shared by every step: :mod:`.config`, :mod:`.plugins` and :mod:`.upstreams` read
kong.yml into pydantic models (on :class:`KongEntity`) and resolve them into these
dataclasses; :mod:`.nginx` renders them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from labkit.errors import LabkitError

#: Services that labkit runs itself in embedded mode, and the Settings field holding their port.
EMBEDDED_SERVICE_PORTS = {"producer": "producer_port", "consumer": "consumer_port"}

#: Kong runs plugins from the highest priority down; the gateway keeps that order.
PLUGIN_PRIORITY = {"cors": 2000, "key-auth": 1250, "rate-limiting": 910}

# Characters accepted in route and service paths: enough for real paths, and
# none that nginx or the generated regexes would need quoting for.
PATH_RE = re.compile(r"/[A-Za-z0-9._~!&,=:@/-]*")
# What the gateway accepts in header names, header values (a consumer's name, a realm), API keys,
# route hosts and HTTP methods: nothing that nginx would need quoted.
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
HEADER_VALUE_RE = re.compile(r"[\x20-\x7e]*")
API_KEY_RE = re.compile(r"[\x21-\x7e]+")
HOST_RE = re.compile(r"[A-Za-z0-9.*-]+")
METHOD_RE = re.compile(r"[A-Z]+")
# A Kong regex path that matches one path exactly: "~/produce-events$" (Kong 3 anchors regex paths
# at the start; "^" may be written too). Only literal characters, and "\." for a dot.
_EXACT_PATH_RE = re.compile(r"~\^?(/(?:[A-Za-z0-9_~!&,=:@/-]|\\\.)*)\$")
# Kong treats an origin with any other character as a regular expression.
LITERAL_ORIGIN_RE = re.compile(r"[A-Za-z0-9.:/-]+")


class GatewayConfigError(LabkitError, ValueError):
    """kong.yml cannot be loaded, or asks for something the embedded gateway cannot do faithfully.

    The message names the entity (route, service, plugin, consumer) and the
    field, and says what to do about it.
    """


#: What Kong keeps on every entity for itself; the gateway accepts and ignores it.
BOOKKEEPING = frozenset({"tags", "created_at", "updated_at"})


class KongEntity(BaseModel):
    """Base of kong.yml's entities as pydantic models: a field the gateway does not know is refused.

    A field given empty (null, [], {}, "") asks for nothing and is dropped first: Kong's own
    exports write unset fields so, and an empty known field means its default. The fields
    in ``IGNORED`` are accepted and dropped too.
    """

    model_config = ConfigDict(extra="forbid")
    IGNORED: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _drop_empty_and_ignored(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {key: value for key, value in data.items() if value not in (None, [], {}, "") and key not in cls.IGNORED}


def refusing(test: Callable[[Any], object], refusal: str) -> AfterValidator:
    """A pydantic check: a value that passes ``test`` is kept, any other is refused with ``refusal``.

    ``{value!r}`` in ``refusal`` names the value; any other brace in it must be doubled.
    """

    def check(value: Any) -> Any:
        if not test(value):
            raise ValueError(refusal.format(value=value))
        return value

    return AfterValidator(check)


def matching(pattern: re.Pattern[str], refusal: str) -> AfterValidator:
    """A pydantic check that a string matches ``pattern`` whole, else ``refusal``."""
    return refusing(pattern.fullmatch, refusal)


def one_of(values: Collection[object], refusal: str) -> AfterValidator:
    """A pydantic check that a value is one of ``values`` (none given: every value is refused), else ``refusal``."""
    return refusing(lambda value: value in values, refusal)


@dataclass
class Upstream:
    """A Kong upstream: the targets a service is balanced over, read by :mod:`.upstreams`."""

    name: str
    algorithm: str
    targets: list[tuple[str, int, int]]  # host, port, weight
    max_fails: int  # 0: nginx never marks a target down
    fail_timeout_s: int


@dataclass
class Service:
    """A Kong service: where a route's requests go, with Kong's timeouts (ms) and retries."""

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
    retries: int = 5  # Kong's default: a failed connection is tried on up to 5 more targets
    upstream: Upstream | None = None  # the Kong upstream named by the service's host, if any


@dataclass
class Plugin:
    """A plugin instance (key-auth, rate-limiting or cors) at one scope, its config with Kong's defaults."""

    name: str
    config: dict[str, Any]
    ident: str  # used in nginx names: "global", "service_producer", "route_produce_events"
    where: str  # for people: "global", "service 'producer'", "route 'produce-events'"

    def error(self, message: str) -> GatewayConfigError:
        """A refusal that names this plugin and where it is configured."""
        return GatewayConfigError(f"plugin '{self.name}' ({self.where}): {message}")


@dataclass
class Route:
    """A Kong route: its paths and matching, its service, and the plugins that run on it (in Kong's order)."""

    name: str
    ident: str
    service: Service
    paths: list[str]
    strip_path: bool
    preserve_host: bool
    methods: list[str]
    hosts: list[str]
    request_buffering: bool
    response_buffering: bool | None
    plugins: dict[str, Plugin] = field(default_factory=dict)


@dataclass
class Consumer:
    """A Kong consumer and its key-auth keys."""

    label: str  # username, else custom_id: how the gateway names the consumer
    username: str | None
    custom_id: str | None
    keys: list[str]


@dataclass
class Gateway:
    """What the embedded gateway renders: the routes of enabled services, and the consumers."""

    routes: list[Route]
    consumers: list[Consumer]


def exact_path(path: str) -> str | None:
    """The one request path a Kong path matches exactly ("~/a$" -> "/a"), or None for a prefix path."""
    match = _EXACT_PATH_RE.fullmatch(path)
    return match.group(1).replace("\\.", ".") if match else None


def request_path(path: str) -> str:
    """How a Kong path reads for people and for telling routes apart: the exact path, else the prefix."""
    return exact_path(path) or path


def nginx_ident(name: str) -> str:
    """``name`` with every character nginx does not allow in a variable or zone name made ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)
