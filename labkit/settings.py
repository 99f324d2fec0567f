"""The one settings object of labkit.

Every part of the lab (services, stack, gateway, clients, CLI, notebooks, tests)
reads its ports, hosts, topic and limits from :class:`Settings`. Values come from
keyword arguments (CLI flags), then ``LABKIT_*`` environment variables, then the
defaults below, which are the seed's ports.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["Settings", "REPO_ROOT", "free_port", "replica_names", "REPLICATED", "KafkaValue"]

#: A librdkafka property's value, as confluent-kafka's clients take it.
KafkaValue = str | int | float | bool

#: The checkout labkit runs from; kong/kong.yml and the state folder live here.
REPO_ROOT = Path(__file__).resolve().parent.parent

Mode = Literal["embedded", "compose", "external"]
BrokerName = Literal["auto", "kafka", "noida", "tansu", "external"]
EventLoop = Literal["auto", "uvloop", "asyncio"]


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux: ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago, below the kernel's ephemeral range.

    A port from ``bind(0)`` is an ephemeral one, which the kernel may give to any outgoing
    connection before the service that was meant to get it binds: a JVM that starts seconds
    later found its port taken (seen 3 times in one afternoon of parallel tests).
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def replica_names(name: str, count: int) -> list[str]:
    """Component names of ``count`` processes of one kind: ``name`` alone, else ``name-1``, ``name-2``…"""
    return [name] if count == 1 else [f"{name}-{number}" for number in range(1, count + 1)]


#: The services labkit runs in replicas: their count setting, base port setting, and which way
#: their ports count from the base. Away from each other, so the seed's adjacent defaults
#: (producer 6789, consumer 6788) never collide: producers 6789, 6790…; consumers 6788, 6787….
REPLICATED = {"producer": ("producers", "producer_port", 1), "consumer": ("consumers", "consumer_port", -1)}


def _free_range(host: str, count: int, step: int, taken: set[int]) -> int:
    """A base port from which ``count`` ports (counting by ``step``) are all free now and not in ``taken``."""
    while True:
        base = free_port(host)
        ports = [base + step * index for index in range(count)]
        if all(0 < port <= 65535 and port not in taken for port in ports) and all(map(_bindable(host), ports[1:])):
            taken.update(ports)
            return base


def _bindable(host: str):
    def free(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
            return True

    return free


class Settings(BaseSettings):
    """Ports, hosts, topic, limits and mode of one lab stack."""

    model_config = SettingsConfigDict(env_prefix="LABKIT_", extra="forbid", frozen=True)

    mode: Mode = "embedded"
    host: str = Field("127.0.0.1", description="Address every component binds and clients connect to.")

    producer_port: int = Field(6789, ge=0, le=65535)
    consumer_port: int = Field(6788, ge=0, le=65535)
    gateway_port: int = Field(8000, ge=0, le=65535)
    kafka_port: int = Field(9092, ge=0, le=65535,
                            description="The (first) Kafka node's client port; node N uses +2(N-1).")
    kafka_controller_port: int = Field(
        9093, ge=0, le=65535, description="The (first) Apache Kafka node's KRaft controller port; node N uses +2(N-1)."
    )
    broker: BrokerName = Field(
        "auto",
        description="kafka (Apache Kafka, a local JVM), noida, tansu, or external: the cluster at kafka_bootstrap; "
        "auto: kafka where Java 17+ and its jars can be had, else noida.",
    )
    kafka_nodes: int = Field(1, ge=1, le=9, description="Apache Kafka nodes (1, or 3 or more for replication).")
    kafka_home: Path | None = Field(None,
                                    description="An unpacked Apache Kafka distribution to run instead of fetched jars.")
    kafka_mirror: str = Field(
        "https://downloads.apache.org/kafka",
        description="Where Apache's Kafka distribution is downloaded from when Maven is missing (checked by SHA-512).",
    )
    kafka_heap_mb: int = Field(256, ge=128, le=65536, description="Each Apache Kafka node's JVM heap.")
    kafka_jvm_options: str = Field(
        # Measured on a busy 2-core machine: the client port opened after 2.4 s instead of 5.5 s, with
        # 1 s of CPU instead of 3 (C2's compiler threads compete with everything else at start).
        "-XX:TieredStopAtLevel=1",
        description="Extra JVM options for each Apache Kafka node; the default compiles with C1 only, which "
        "starts in half the time; empty for the JVM's full JIT.",
    )
    kafka_bootstrap: str | None = Field(
        None, description="Bootstrap servers of an external cluster; default: the embedded broker."
    )
    kafka_properties: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="Extra librdkafka properties for both services (SASL, SSL, tuning)."
    )

    topic: str = Field("events", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(3, ge=1, le=1000)
    producers: int = Field(1, ge=1, le=64, description="Producer processes behind the gateway (replicas).")
    consumers: int = Field(1, ge=1, le=64, description="Consumer processes behind the gateway (replicas).")

    max_frame_bytes: int = Field(64 * 1024, ge=256, description="Largest WebSocket frame a sender may send.")
    max_batch: int = Field(1000, ge=1, description="Most events in one JSON array frame.")
    sender_rate_limit: float = Field(
        2000, ge=0, description="WebSocket messages per second per sender connection (0: unlimited)."
    )
    watcher_queue: int = Field(10_000, ge=1, description="Frames buffered per watcher before it is disconnected.")
    sender_reply_backlog: int = Field(
        10_000, ge=1, description="Unwritten replies per sender past which the producer stops reading that sender."
    )
    sender_reply_stall_s: float | None = Field(
        None, gt=0,
        description="A sender whose replies do not move this long is closed with 1013 (default: ping_timeout_s)."
    )
    gateway_auth_failures_per_s: float = Field(1, gt=0, description="Refused API keys per second per client address.")
    gateway_auth_failure_burst: int = Field(20, ge=1, description="Refused API keys a client address may try at once.")
    gateway_workers: int = Field(
        # The open-files limit holds per process and nginx holds two files per proxied WebSocket: under a
        # hard limit of 20,000 one worker holds at most 9,840 watchers on each of two routes' budgets.
        1, ge=1, le=64, description="nginx worker processes of the embedded gateway; each has an open-files limit "
        "of its own, so more workers hold more connections. The benchmark raises it for its watchers.",
    )
    replay_buffer: int = Field(10_000, ge=0, description="Recent events the consumer keeps for ?replay=N.")
    max_resumes: int = Field(
        8, ge=1, le=64, description="Read-backs for resuming watchers at once per consumer; more are refused with 1013."
    )
    max_resumes_per_address: int = Field(
        2, ge=1, le=64, description="Of those, read-backs at once for one client address; more are refused with 1013."
    )
    retain_events: int = Field(
        # noida-db's CPU grows with the records it holds (about 0.005 core per 1,000 while the topic
        # changes, measured): 10,000 per partition keeps a long session flat.
        10_000, ge=0, description="Records kept per partition; older ones are deleted (0: no limit)."
    )
    retain_minutes: float = Field(0, ge=0, description="Records older than this are deleted (0: no limit).")

    ping_interval_s: float = Field(20, gt=0,
                                   description="Services ping idle clients this often "
                                               "(keeps gateways from timing out).")
    ping_timeout_s: float = Field(20, gt=0,
                                  description="A client that does not answer a ping this long is dropped (half-open).")
    handshake_timeout_s: float = Field(10, gt=0,
                                       description="A connection that does not finish its WebSocket handshake is "
                                                   "dropped.")
    max_connections: int = Field(4096, ge=1,
                                 description="WebSocket connections per service; more are closed with 1013.")
    event_loop: EventLoop = Field(
        "auto", description="The services' event loop: uvloop, asyncio's own, or auto: uvloop where it can be "
        "imported, else asyncio's.",
    )
    max_connections_per_address: int = Field(
        # One address holding every connection locks everyone else out (4,096 idle watchers took 4.2 s).
        256, ge=1, description="Of those, connections from one client address, per service and per gateway route; "
        "more are closed with 1013 (the gateway answers 503). The benchmark raises it for its watchers.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Networks whose X-Real-IP header the services take as the client's address (the gateway's); "
        "a connection from elsewhere is counted by its own address.",
    )
    allowed_origins: list[str] = Field(
        default_factory=lambda: [r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"],
        description="Origin headers the services accept (regular expressions); requests without Origin always pass.",
    )

    kong_config: Path = Field(REPO_ROOT / "kong" / "kong.yml", description="Kong declarative config (routes, plugins).")
    state_dir: Path = Field(REPO_ROOT / ".labkit", description="Logs, pid files and the stack record.")
    api_key: str | None = Field(None, description="key-auth key for the gateway; default: the lab key in kong.yml.")

    @field_validator("kafka_properties", mode="before")
    @classmethod
    def _split_properties(cls, value: object) -> object:
        # LABKIT_KAFKA_PROPERTIES (or a flag) may be a JSON object or "k=v,k=v".
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return json.loads(value)
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            bad = [item for item in pairs if len(item) != 2]
            if bad:
                raise ValueError("expected key=value pairs separated by commas")
            return {k.strip(): v.strip() for k, v in pairs}
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network: write an address or address/prefix, e.g. "
                                 "10.0.0.0/8") from None
        return value

    @field_validator("producers", "consumers", mode="before")
    @classmethod
    def _at_least_one(cls, value: object, info) -> object:
        if isinstance(value, (int, str)) and str(value).strip().lstrip("-").isdigit() and int(value) < 1:
            raise ValueError(
                f"{info.field_name} must be 1 or more (the stack needs one {info.field_name[:-1]}; more run "
                f"as replicas behind the gateway): --{info.field_name} N or LABKIT_{info.field_name.upper()}"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A cluster named in code or on the command line is the external broker, whatever LABKIT_BROKER
        # says: what is given explicitly beats the environment (LABKIT_BROKER=kafka make test runs `up --kafka`).
        given = getattr(init_settings, "init_kwargs", {})
        if given.get("kafka_bootstrap") and given.get("broker") is None:
            chosen = InitSettingsSource(settings_cls, init_kwargs={"broker": "external"})
            return init_settings, chosen, env_settings, dotenv_settings, file_secret_settings
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _bootstrap_means_external(cls, values: object) -> object:
        # Naming a cluster's servers is choosing the external broker.
        if isinstance(values, dict) and values.get("kafka_bootstrap") and "broker" not in values:
            return {**values, "broker": "external"}
        return values

    @model_validator(mode="after")
    def _nodes_need_kafka(self) -> Settings:
        if self.kafka_nodes == 1:
            return self
        if self.broker not in ("kafka", "auto"):
            raise ValueError(f"kafka_nodes (--nodes) runs Apache Kafka nodes; broker {self.broker!r} is one process: "
                             "use --broker kafka, or drop --nodes")
        if self.kafka_nodes == 2:
            raise ValueError("2 Kafka nodes cannot keep min.insync.replicas=2 with replication factor 3 when one dies "
                             "(no majority either): use --nodes 1 or --nodes 3")
        return self

    @model_validator(mode="after")
    def _external_needs_servers(self) -> Settings:
        if (self.mode == "external" or self.broker == "external") and not self.kafka_bootstrap:
            raise ValueError("external mode needs the cluster's bootstrap servers: --kafka HOST:PORT or "
                             "LABKIT_KAFKA_BOOTSTRAP")
        if self.kafka_bootstrap and self.broker != "external":
            raise ValueError(
                f"kafka_bootstrap names an external cluster, but broker is {self.broker!r}: "
                "drop one (LABKIT_KAFKA_BOOTSTRAP or LABKIT_BROKER / --broker)"
            )
        return self

    @model_validator(mode="after")
    def _replica_ports_apart(self) -> Settings:
        # A replica whose port another component holds would fail only once started, mid-`up`.
        owners: dict[int, tuple[str, str]] = {}
        fixed = [("gateway", self.gateway_port, "gateway_port")]
        if self.broker != "external":
            fixed.append(("broker", self.kafka_port, "kafka_port"))
        for service, (_, setting, _) in REPLICATED.items():
            fixed += [(name, port, setting) for name, port in self.replicas(service)]
        for name, port, setting in fixed:
            if port == 0:
                continue
            if not 0 < port <= 65535:
                raise ValueError(f"{name} would listen on port {port}, outside 1-65535: move {setting}")
            if port in owners and owners[port][1] != setting:
                other, other_setting = owners[port]
                raise ValueError(
                    f"{name} would listen on port {port}, which {other} uses: move one with "
                    f"--{setting.replace('_', '-')} (LABKIT_{setting.upper()}) or "
                    f"--{other_setting.replace('_', '-')} (LABKIT_{other_setting.upper()})"
                )
            owners[port] = (name, setting)
        return self

    def replicas(self, service: str) -> list[tuple[str, int]]:
        """(component name, port) of each replica of ``service`` ("producer" or "consumer")."""
        count_setting, port_setting, step = REPLICATED[service]
        base, count = getattr(self, port_setting), getattr(self, count_setting)
        ports = [base + step * index if base else 0 for index in range(count)]
        return list(zip(replica_names(service, count), ports, strict=True))

    def replica_env(self, service: str, port: int) -> dict[str, object]:
        """The changes that make one replica's own settings: its port, and a count of one."""
        count_setting, port_setting, _ = REPLICATED[service]
        return {port_setting: port, count_setting: 1}

    def __repr_args__(self):  # keep credentials in kafka_properties out of reprs and logs
        for name, value in super().__repr_args__():
            yield name, ({key: "***" for key in value} if name == "kafka_properties" and value else value)

    @property
    def kafka_node_ports(self) -> list[tuple[int, int, int]]:
        """Each Apache Kafka node's (node.id, client port, controller port): node N at the base ports + 2(N-1)."""
        return [(n, self.kafka_port + 2 * (n - 1), self.kafka_controller_port + 2 * (n - 1))
                for n in range(1, self.kafka_nodes + 1)]

    @property
    def bootstrap_servers(self) -> str:
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        if self.broker == "kafka" and self.kafka_nodes > 1:
            return ",".join(f"{self.host}:{port}" for _, port, _ in self.kafka_node_ports)
        return f"{self.host}:{self.kafka_port}"

    def url(self, port: int, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://{self.host}:{port}{path}"

    @property
    def produce_url(self) -> str:
        """Where senders connect: the gateway's /produce-events route."""
        return self.url(self.gateway_port, "/produce-events")

    @property
    def consume_url(self) -> str:
        """Where watchers connect: the gateway's /consume-events route."""
        return self.url(self.gateway_port, "/consume-events")

    @property
    def broker_long_polls(self) -> bool:
        """Whether the broker holds an empty fetch until records come (Apache Kafka, Tansu, a real cluster).

        noida-db 0.2.3 answers every fetch at once, so labkit's readers pause on it instead (labkit/kafka.py).
        """
        return self.broker != "noida"

    def kafka_reader_config(self, **overrides: KafkaValue) -> dict[str, KafkaValue]:
        """:meth:`kafka_config` for a reader: on a broker that long-polls, an idle fetch waits there.

        The wait does not delay a record: the broker answers as soon as one arrives. It is librdkafka's
        500 ms, not longer: a broker reads one request at a time from a connection, so a client's other
        requests (watermarks, metadata) wait behind its held fetch (at 5 s, the topic viewer's watermark
        look-ups timed out). Only noida-db, which ignores the wait, gets the short one (CONSUMER_DEFAULTS).
        """
        waits = {"fetch.wait.max.ms": 500} if self.broker_long_polls else {}
        return self.kafka_config(**{**waits, **overrides})

    def kafka_config(self, **overrides: KafkaValue) -> dict[str, KafkaValue]:
        """librdkafka properties shared by every Kafka client of the lab."""
        config: dict[str, KafkaValue] = {"bootstrap.servers": self.bootstrap_servers, "socket.nagle.disable": True}
        config.update(self.kafka_properties)
        config.update(overrides)
        return config

    def with_free_ports(self, **changes: object) -> Settings:
        """A copy on ports that are free now (for tests and benchmarks)."""
        wanted = self.replace(**changes)  # validated first: the replica and node counts are the copy's
        taken: set[int] = set()
        ports = {
            "producer_port": _free_range(wanted.host, wanted.producers, 1, taken),
            "consumer_port": _free_range(wanted.host, wanted.consumers, -1, taken),
            "gateway_port": _free_range(wanted.host, 1, 1, taken),
            # node N: base + 2(N-1), its controller one above
            "kafka_port": _free_range(wanted.host, 2 * wanted.kafka_nodes, 1, taken),
        }
        return wanted.replace(**ports, kafka_controller_port=ports["kafka_port"] + 1)

    def replace(self, **changes: object) -> Settings:
        """A validated copy with some fields changed."""
        return type(self)(**{**self.model_dump(), **changes})

    def as_env(self) -> dict[str, str]:
        """These settings as LABKIT_* variables, so a child process (a service, a kernel) builds the same Settings."""
        return {
            f"LABKIT_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
            for name, value in self.model_dump(mode="json").items()
            if value is not None
        }
