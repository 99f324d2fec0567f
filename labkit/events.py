"""The one event model of labkit, and its validation.

Plain functions over bytes and structs, with no socket in sight, so that the
producer, the consumer, the clients and the tests share them. An event is a JSON
object with ``type`` (non-empty string) and ``value`` (number), and optionally
``id``, ``key``, ``data`` (object) and ``sent_at`` (sender's epoch milliseconds).
The producer adds ``received_at``; the consumer adds where Kafka put the event and
when it was delivered.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

__all__ = [
    "Event",
    "Recorded",
    "Delivered",
    "Ack",
    "EventError",
    "FrameError",
    "parse_frame",
    "parse_record",
    "delivered_frame",
    "encode",
    "decode_reply",
    "now_ms",
    "new_id",
    "PROBE_TYPE",
    "is_reserved",
    "parse_json_object",
]

#: Event types starting with this are labkit's own (the stack's readiness probe): a watcher
#: receives them only when it names them in ``types``, and replay never holds them.
RESERVED_PREFIX = "labkit."
PROBE_TYPE = "labkit.ready"


def is_reserved(event_type: str) -> bool:
    return event_type.startswith(RESERVED_PREFIX)

Text = Annotated[str, Meta(min_length=1, max_length=256)]
Number = int | float


class Event(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a sender sends."""

    type: Text
    value: Number
    id: Text | UnsetType = UNSET
    key: Text | UnsetType = UNSET
    data: dict[str, Any] | UnsetType = UNSET
    sent_at: Number | UnsetType = UNSET


class Recorded(Event, forbid_unknown_fields=True, omit_defaults=True):
    """What the producer writes to Kafka: the event with its id and arrival time."""

    received_at: Number = 0


class Delivered(Recorded, forbid_unknown_fields=True, omit_defaults=True):
    """What a watcher receives: the record plus where Kafka put it and when it left."""

    topic: str = ""
    partition: int = -1
    offset: int = -1
    kafka_ts: Number = 0
    delivered_at: Number = 0
    epoch: str = ""  # the broker log's identity (labkit.epoch): offsets only mean something within one


class Ack(msgspec.Struct, omit_defaults=True):
    """The producer's reply: ``ack`` after Kafka acknowledged, else ``error``."""

    ack: str | None = None
    partition: int | None = None
    offset: int | None = None
    error: str | None = None
    id: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.ack is not None


@dataclass(frozen=True, slots=True)
class EventError:
    """Why one event (or a whole frame) was refused: an error code and a precise detail."""

    code: str
    detail: str
    id: str | None = None

    def frame(self) -> bytes:
        return encode({"error": self.code, "id": self.id, "detail": self.detail})


class FrameError(Exception):
    """A frame that cannot be read at all; no event in it was accepted."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.error = EventError(code, detail)


_event_decoder = msgspec.json.Decoder(Event)
_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_record_decoder = msgspec.json.Decoder(Recorded)
_reply_decoder = msgspec.json.Decoder(Ack)
_delivered_decoder = msgspec.json.Decoder(Delivered)
_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def now_ms() -> float:
    return time.time() * 1000.0


def new_id() -> str:
    return uuid.uuid4().hex


def _first_byte(frame: bytes) -> int | None:
    for byte in frame:
        if byte not in b" \t\r\n":
            return byte
    return None


def _id_of(raw: bytes) -> str | None:
    # Only used on the error path, to tell the sender which event was refused.
    try:
        candidate = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    found = candidate.get("id") if isinstance(candidate, dict) else None
    return found if isinstance(found, str) else None


def _validate(raw: bytes, where: str) -> Event | EventError:
    try:
        return _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        detail = str(exc).replace("`$", f"`{where}")
        if "- at `" not in detail:
            detail = f"{detail} - at `{where}`"
        return EventError("invalid_event", detail, _id_of(raw))


def parse_frame(frame: str | bytes, max_batch: int) -> list[Event | EventError]:
    """Read one text frame: one event object or a JSON array of them.

    Returns each event, or an :class:`EventError` for each one that is invalid, so
    one bad event in a batch does not cost the others. Raises :class:`FrameError`
    when the frame as a whole is unreadable.
    """
    try:
        return list(_parse_frame(frame.encode() if isinstance(frame, str) else frame, max_batch))
    except RecursionError:
        raise FrameError("too_deep", "JSON nested too deeply: keep data objects a few levels deep") from None


def _parse_frame(data: bytes, max_batch: int) -> Iterator[Event | EventError]:
    first = _first_byte(data)
    if first == ord("{"):
        try:
            yield _event_decoder.decode(data)
        except msgspec.ValidationError:
            yield _validate(data, "$")
        except msgspec.DecodeError as exc:
            raise FrameError("invalid_json", f"not valid JSON: {exc}") from None
        return
    if first != ord("["):
        if first is None:
            raise FrameError("invalid_json", "empty frame: send a JSON object or an array of objects")
        try:
            msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise FrameError("invalid_json", f"not valid JSON: {exc}") from None
        raise FrameError("invalid_frame", "a frame must be a JSON object (one event) or an array of event objects")
    try:
        items = _batch_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise FrameError("invalid_json", f"not valid JSON: {exc}") from None
    if not items:
        raise FrameError("empty_batch", "the array holds no event: send at least one")
    if len(items) > max_batch:
        raise FrameError("batch_too_large", f"the array holds {len(items)} events; at most {max_batch} per frame")
    for index, raw in enumerate(items):
        yield _validate(raw, f"$[{index}]")


def parse_json_object(text: str | None) -> dict[str, Any] | None:
    """An event's ``data`` as typed by a person: blank means none, else a JSON object.

    ValueError says what is wrong, with the line and column of a syntax error.
    """
    if text is None or not text.strip():
        return None
    try:
        data = json.loads(text)  # the standard library's messages name the line and column
    except json.JSONDecodeError as exc:
        raise ValueError(f"data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ValueError('data must be a JSON object, e.g. {"page": "/home"}')
    return data


def parse_record(value: bytes | None) -> Recorded | None:
    """Read a Kafka record's value; None when it is not a valid labkit record."""
    if not value:
        return None
    try:
        return _record_decoder.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # RecursionError: a record nested thousands deep, written to Kafka by another client;
        # escaping, it would drop every other record of the batch it came in.
        return None


def delivered_frame(
    value: bytes, topic: str, partition: int, offset: int, kafka_ts: int, delivered_at: float, epoch: str = ""
) -> bytes:
    """The watcher frame for a validated record, built by extending its JSON once.

    ``value`` has passed :func:`parse_record`, so it is a JSON object whose fields
    are all known; the consumer's fields are appended without re-encoding it.
    """
    body = value.rstrip()
    tail = encode(
        {"topic": topic, "partition": partition, "offset": offset, "kafka_ts": kafka_ts, "delivered_at": delivered_at,
         "epoch": epoch}
    )
    return body[:-1] + b"," + tail[1:]


def decode_reply(frame: str | bytes) -> Ack:
    """Read a producer reply (ack or error)."""
    return _reply_decoder.decode(frame)


def decode_delivered(frame: str | bytes) -> Delivered:
    """Read a watcher frame."""
    return _delivered_decoder.decode(frame)
