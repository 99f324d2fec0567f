"""What the send form accepts, as plain functions over the texts a person typed.

They apply the event model itself (:func:`labkit.client.as_event`,
:func:`labkit.events.parse_json_object`, the size of the frame the Sender's encoder
makes, against the producer's ``max_frame_bytes``) and the pacer's rule for rates
(:class:`labkit.pacing.Schedule`), so the form refuses exactly what the producer and
the pacer would. Each problem is keyed by the field it concerns, in words a person
reads under that field; nothing here knows of widgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labkit.client import as_event, stamped
from labkit.events import Event, encode, parse_json_object
from labkit.pacing import Schedule

__all__ = ["FormError", "parse_number", "read_event", "checked_event", "read_burst"]

_VALID = {"type": "t", "value": 0}  # a valid event, to check one field at a time with the model


class FormError(ValueError):
    """What is wrong with the form's input, in words shown under the form."""


def parse_number(text: str, name: str = "value") -> int | float:
    """A number as typed: ``1`` stays an int, ``2.5`` and ``3e6`` are floats; FormError says what is wrong."""
    typed = text.strip()
    if not typed:
        raise FormError(f"{name} is empty: type a number, e.g. 1 or 2.5")
    for kind in (int, float):
        try:
            return kind(typed)
        except ValueError:
            pass
    raise FormError(f"{name}: {typed!r} is not a number; type e.g. 1, -2.5 or 3e6")


def _in_words(field: str, typed: Any, problem: str) -> str:
    """The event model's message about one field, said for a person (the limit still comes from the model)."""
    message = problem.split(" - at `", 1)[0]
    if "length >= 1" in message:
        return f"{field} is empty" + (": choose one or type a name" if field == "type" else "")
    if "length <= " in message:
        return f"{field} is {len(typed)} characters long; at most {message.rsplit('<= ', 1)[1]}"
    if message.startswith(f"{field} ") and typed is not None:  # as_event's own words: say what was typed
        return f"{field} {typed}: {message.removeprefix(field + ' ')}"
    return message if message.startswith(field) else f"{field}: {message}"


def _field_problem(field: str, value: Any, typed: Any = None) -> str | None:
    """What the event model says about ``field`` alone, or None."""
    try:
        as_event({**_VALID, field: value})
    except ValueError as exc:
        return _in_words(field, value if typed is None else typed, str(exc))
    return None


def read_event(kind: str, value: str, key: str, data: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The event the form's texts describe, and what is wrong with each field (every field is checked)."""
    problems: dict[str, str] = {}
    event: dict[str, Any] = {"type": (kind or "").strip()}
    try:
        event["value"] = parse_number(value)
    except FormError as exc:
        problems["value"] = str(exc)
    if key.strip():
        event["key"] = key.strip()
    try:
        if (parsed := parse_json_object(data)) is not None:
            event["data"] = parsed
    except ValueError as exc:
        problems["data"] = str(exc)
    for field, item in event.items():
        if field not in problems and (problem := _field_problem(field, item,
                                                                value.strip() if field == "value" else None)):
            problems[field] = problem
    return event, problems


def checked_event(event: Mapping[str, Any] | Event, max_frame_bytes: int) -> tuple[Event | None, dict[str, str]]:
    """The event as the Sender will send it (with its id and sent_at).

    None, with the problems by field, when the model or the frame limit refuses it.
    """
    try:
        item = stamped(dict(event) if isinstance(event, Mapping) else event)
    except ValueError as exc:
        text = str(exc)
        field = text.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in text else text.split(" ", 1)[0]
        typed = event.get(field) if isinstance(event, Mapping) else getattr(event, field, None)
        return None, {field: _in_words(field, typed, text)}
    size = len(encode(item))  # the Sender's encoder, on the very event it will send
    if size > max_frame_bytes:
        return None, {"data": f"the event is {size:,} bytes as sent; the producer takes at most {max_frame_bytes:,} "
                              "bytes a frame (max_frame_bytes): shorten data"}
    return item, {}


def read_burst(count: str, rate: str) -> tuple[int, float, dict[str, str]]:
    """A burst's count and rate as typed, and what is wrong with either."""
    problems: dict[str, str] = {}
    number: int | float = 0
    per_second = 0.0
    try:
        number = parse_number(count, "burst")
        if not isinstance(number, int) or number < 1:
            problems["burst"] = f"burst must be a whole number of events, at least 1; not {count.strip()}"
    except FormError as exc:
        problems["burst"] = str(exc)
    try:
        per_second = float(parse_number(rate, "rate"))
        Schedule(per_second, 1, 0.0)  # the pacer's own rule: a finite rate above 0
    except FormError as exc:
        problems["rate"] = str(exc)
    except ValueError:
        problems["rate"] = f"rate must be a finite number of events per second above 0; not {rate.strip()}"
    return int(number) if not problems.get("burst") else 0, per_second, problems
