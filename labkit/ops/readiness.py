"""Ready means ready: one probe event sent through the gateway must come back through the consumer.

The probe uses a reserved event type (``labkit.ready``): watchers receive it only
when they name it in ``types``, and replay never holds it. It is written with plain
``websockets`` (sync client) so that it runs the same from a CLI, a notebook kernel
that already has an event loop, or a test.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import websockets
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential
from websockets.sync.client import connect

from labkit.errors import ComponentFailed
from labkit.events import PROBE_TYPE, decode_delivered, decode_reply, encode
from labkit.settings import Settings

__all__ = ["probe_round_trip"]

PROBE_TIMEOUT_S = 30.0
#: One probe's longest wait for its ack and its delivery: a probe lost in a start-up race is sent again.
PROBE_ATTEMPT_S = 10.0


class _StoreRefused(Exception):
    """Kafka refused the probe event: a broker just restarted after a crash refuses the producer's old
    session once, and the producer starts a new one (labkit.services.producer_flights); try again."""


# Right after start-up the gateway may answer 502 for a moment, or a socket may not take connections yet.
_TRANSIENT = (OSError, TimeoutError, websockets.InvalidStatus, websockets.InvalidHandshake, websockets.ConnectionClosed,
              _StoreRefused)


def _one_probe(settings: Settings, api_key: str | None, deadline: float) -> None:
    deadline = min(deadline, time.monotonic() + PROBE_ATTEMPT_S)
    headers = {"apikey": api_key} if api_key else None
    probe_id = f"ready-{uuid.uuid4().hex[:12]}"
    watch_url = f"{settings.consume_url}?types={quote(PROBE_TYPE)}"
    with connect(watch_url, additional_headers=headers, open_timeout=5) as watcher, \
            connect(settings.produce_url, additional_headers=headers, open_timeout=5) as sender:
        sender.send(encode({"type": PROBE_TYPE, "value": 0, "id": probe_id}).decode())
        reply = decode_reply(sender.recv(timeout=max(0.1, deadline - time.monotonic())))
        if reply.error == "kafka_error":
            raise _StoreRefused(f"the producer could not store the probe: {reply.detail}")
        if not reply.ok:
            raise ComponentFailed("producer", f"refused the readiness probe: {reply.error}: {reply.detail}")
        while True:
            frame = watcher.recv(timeout=max(0.1, deadline - time.monotonic()))
            if decode_delivered(frame).id == probe_id:
                return


def probe_round_trip(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> float:
    """Send a probe event through the gateway and wait until the consumer delivers it; returns milliseconds."""
    from labkit.discovery import lab_api_key

    api_key = lab_api_key(settings)
    began = time.monotonic()
    deadline = began + timeout
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.01, max=0.5),
        retry=retry_if_exception_type(_TRANSIENT),
        reraise=True,
    )
    try:
        retrying(_one_probe, settings, api_key, deadline)
    except _TRANSIENT as exc:
        raise ComponentFailed(
            "stack", f"did not carry a probe event end to end within {timeout:.0f} s ({type(exc).__name__}: {exc}); "
            "see `labkit logs`",
        ) from exc
    return (time.monotonic() - began) * 1000
