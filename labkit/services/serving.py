"""What the producer and the consumer share: metrics, /healthz and /metrics, serving.

Each service is a WebSocket server that also answers two plain HTTP paths on the
same port, so one address tells everything about it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from labkit.errors import LabkitError
from labkit.events import encode
from labkit.kafka import cluster_state
from labkit.rlimits import raise_open_files_limit
from labkit.services.addresses import Tally, client_address
from labkit.settings import Settings

__all__ = [
    "BrokerProbe", "ServiceMetrics", "make_process_request", "run_service", "http_response", "json_response",
    "run_on_event_loop",
]

log = logging.getLogger("labkit")

#: The class of a service's connections (``create_connection``): its handler is written for that class.
C = TypeVar("C", bound=ServerConnection)

# On SIGTERM, a client that has not answered the close frame this long is cut off.
SHUTDOWN_CLOSE_S = 1.0


# Delivery latencies of a local lab sit between a tenth of a millisecond and a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def configure_logging() -> None:
    """One line per record, with time and source, on stderr (the stack sends it to the log file)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


class ServiceMetrics:
    """The Prometheus metrics every service exposes, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_in = Counter(
            "labkit_events_in", "Events the service took in", registry=self.registry
        )
        self.events_out = Counter(
            "labkit_events_out", "Events the service passed on (acked or delivered)", registry=self.registry
        )
        self.errors = Counter("labkit_errors", "Errors by code", ["code"], registry=self.registry)
        self.clients = Gauge("labkit_clients", "Connected WebSocket clients", registry=self.registry)
        self.overflows = Counter(
            "labkit_queue_overflows", "Clients disconnected because their queue was full", registry=self.registry
        )
        self.latency = Histogram(
            "labkit_delivery_latency_seconds",
            "Producer: receipt to Kafka ack. Consumer: producer receipt to delivery.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def run_on_event_loop(main: Coroutine[Any, Any, None], choice: str) -> None:
    """Run a service's main coroutine to its end on the event loop ``choice`` names (``Settings.event_loop``).

    uvloop (libuv) wakes for less CPU than asyncio's selector loop: measured at 1,000 ev/s on Apache
    Kafka, figures in docs/performance.md. ``auto`` falls back to asyncio's loop where uvloop cannot be imported.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                main.close()  # never run: no "coroutine was never awaited" warning beside the error
                raise LabkitError("event_loop is uvloop but uvloop cannot be imported: pip install uvloop "
                                  "(pyproject.toml pins it), or set LABKIT_EVENT_LOOP=asyncio") from None
            log.info("uvloop cannot be imported: running on asyncio's own event loop")
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def http_response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, payload: Any) -> Response:
    return http_response(status, encode(payload) + b"\n", "application/json")


def make_process_request(
    health: Callable[[], dict[str, Any]],
    metrics: ServiceMetrics,
    check_websocket: Callable[[ServerConnection, Request], Response | None] | None = None,
) -> Callable[[ServerConnection, Request], Response | None]:
    """Answer /healthz and /metrics over plain HTTP; let other paths upgrade."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return json_response(HTTPStatus.OK, health())
        if path == "/metrics":
            return http_response(HTTPStatus.OK, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return json_response(
                HTTPStatus.UPGRADE_REQUIRED,
                {"error": "upgrade_required",
                 "detail": "connect with a WebSocket client; HTTP paths: /healthz, /metrics"},
            )
        if check_websocket is not None:
            return check_websocket(connection, request)
        return None

    return process_request


def limit_connections(
    handler: Callable[[C], Awaitable[None]], settings: Settings
) -> Callable[[C], Awaitable[None]]:
    """Close connections past ``max_connections``, or past ``max_connections_per_address`` from one client
    address, with 1013 (try again later): a flood cannot exhaust the service, nor one address starve the others."""
    held = Tally(settings.max_connections, settings.max_connections_per_address)

    async def guarded(ws: C) -> None:
        address = client_address(ws, settings.trusted_proxies)
        refusal = held.refusal(address)
        if refusal is not None:
            await ws.close(CloseCode.TRY_AGAIN_LATER, f"too many connections ({refusal}); try again later")
            return
        held.take(address)
        try:
            await handler(ws)
        finally:
            held.give_back(address)

    return guarded


async def run_service(
    name: str,
    settings: Settings,
    port: int,
    handler: Callable[[C], Awaitable[None]],
    process_request: Callable[[ServerConnection, Request], Response | None],
    *,
    create_connection: type[C],
    started: Callable[[Server], Awaitable[None]] | None = None,
    stopping: Callable[[], Awaitable[None]] | None = None,
    **serve_options: Any,
) -> None:
    """Serve until SIGTERM or SIGINT, then close connections and call ``stopping``.

    Each connection is a ``create_connection`` (``ServerConnection`` or a subclass), the class ``handler`` takes.
    """
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    raise_open_files_limit()  # each watcher is a socket: 1024 would cap a service below max_connections
    origins = [None, *(re.compile(pattern) for pattern in settings.allowed_origins)]
    # websockets types its handler for any ServerConnection; each one it passes is a create_connection.
    guarded = cast(Callable[[ServerConnection], Awaitable[None]], limit_connections(handler, settings))
    async with serve(
        guarded,
        settings.host,
        port,
        create_connection=create_connection,
        process_request=process_request,
        origins=origins,  # a browser page from elsewhere gets 403
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        close_timeout=settings.ping_timeout_s,  # a peer that ignores pings ignores the close too
        open_timeout=settings.handshake_timeout_s,
        compression=None,  # per-message deflate costs CPU per frame and per client
        **serve_options,
    ) as server:
        log.info("%s listening on ws://%s:%s (event loop: %s)", name, settings.host, port, type(loop).__module__)
        if started is not None:
            await started(server)
        await stop
        log.info("%s stopping", name)
        for connection in server.connections:
            # A client that does not answer the close (a busy kernel, a stopped process) would hold the
            # stop for close_timeout (ping_timeout_s, 20 s) per service: labkit down took 10 s a service.
            connection.close_timeout = SHUTDOWN_CLOSE_S
        server.close(close_connections=True)
        await server.wait_closed()
    if stopping is not None:
        await stopping()


class BrokerProbe:
    """Tracks whether the broker answers, for /healthz, without touching the event loop.

    It asks with an admin client of its own: a consumer busy in poll() on another
    thread does not answer metadata requests promptly.
    """

    INTERVAL_S = 2.0  # how soon /healthz sees a broker go or come back

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient(settings.kafka_config(**{"client.id": "labkit-probe"}))
        self.topic = settings.topic
        self.state = "unknown"
        #: From the last metadata answer: the brokers that answer, and the topic's partitions whose
        #: in-sync replicas are fewer than their replicas (a node down or catching up).
        self.brokers: list[int] = []
        self.under_replicated: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        """For /healthz: whether the broker answers, which nodes do, and the partitions short of in-sync replicas."""
        return {"broker": self.state, "brokers_up": self.brokers, "under_replicated": self.under_replicated}

    def saw_broker(self) -> None:
        self.state = "up"

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            try:
                # All topics: naming one would let the broker auto-create it.
                brokers, partitions = await asyncio.to_thread(cluster_state, self.admin, self.topic)
                self.brokers = brokers
                self.under_replicated = [p.partition for p in partitions if p.under_replicated]
                self.state = "up"
            except Exception as exc:  # any failure to get metadata means the broker is not answering
                log.debug("broker probe failed: %s", exc)
                self.state = "down"
            await asyncio.sleep(self.INTERVAL_S)
