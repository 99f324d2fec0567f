"""Bad input to the producer, through the gateway: a clear error, the service stays up, nothing valid is lost."""

from __future__ import annotations

import json

import pytest
import websockets
from plain import lab_key
from websockets.frames import CloseCode

from labkit import Stack

BAD_FRAMES = [
    ("not json at all", "invalid_json", "not valid JSON"),
    ('{"type": "a", "value": 1', "invalid_json", "not valid JSON"),
    ("42", "invalid_frame", "JSON object"),
    ('"a string"', "invalid_frame", "JSON object"),
    ("[]", "empty_batch", "no event"),
    ('{"value": 1}', "invalid_event", "missing required field `type`"),
    ('{"type": "a"}', "invalid_event", "missing required field `value`"),
    ('{"type": "", "value": 1}', "invalid_event", "`$.type`"),
    ('{"type": 7, "value": 1}', "invalid_event", "Expected `str`, got `int` - at `$.type`"),
    ('{"type": "a", "value": "1"}', "invalid_event", "at `$.value`"),
    ('{"type": "a", "value": true}', "invalid_event", "got `bool` - at `$.value`"),
    ('{"type": "a", "value": 1, "data": [1]}', "invalid_event", "at `$.data`"),
    ('{"type": "a", "value": 1, "sent_at": "now"}', "invalid_event", "at `$.sent_at`"),
    ('{"type": "a", "value": 1, "colour": "red"}', "invalid_event", "unknown field `colour`"),
    ('{"type": "a", "value": 1, "id": ""}', "invalid_event", "at `$.id`"),
    ("[1]", "invalid_event", "at `$[0]`"),
]


@pytest.fixture
async def producer_ws(stack: Stack):
    headers = {"apikey": lab_key(stack.settings)}
    async with websockets.connect(stack.settings.produce_url, additional_headers=headers, max_size=None) as ws:
        yield ws


async def send_valid_and_see_it(ws, collector, event_type: str, value: int) -> None:
    await ws.send(json.dumps({"type": event_type, "value": value, "id": f"ok-{value}"}))
    reply = json.loads(await ws.recv())
    assert reply["ack"] == f"ok-{value}", reply
    events = await collector.until(value + 1)
    assert events[value].id == f"ok-{value}"


async def test_each_bad_frame_gets_a_named_error_and_the_connection_goes_on(producer_ws, collect, event_type):
    collector = await collect(types=[event_type])
    for index, (frame, code, detail) in enumerate(BAD_FRAMES):
        await producer_ws.send(frame)
        reply = json.loads(await producer_ws.recv())
        assert reply["error"] == code, (frame, reply)
        assert detail in reply["detail"], (frame, reply)
        assert set(reply) == {"error", "id", "detail"}
        await send_valid_and_see_it(producer_ws, collector, event_type, index)


async def test_a_bad_event_in_a_batch_costs_only_itself(producer_ws, collect, event_type):
    collector = await collect(types=[event_type])
    batch = [
        {"type": event_type, "value": 1, "id": "first"},
        {"type": event_type, "value": "x", "id": "broken"},
        {"type": event_type, "value": 3, "id": "third"},
    ]
    await producer_ws.send(json.dumps(batch))
    replies = [json.loads(await producer_ws.recv()) for _ in range(3)]
    errors = [r for r in replies if "error" in r]
    assert errors == [{"error": "invalid_event", "id": "broken", "detail": errors[0]["detail"]}]
    assert "`$[1].value`" in errors[0]["detail"]
    assert sorted(r["ack"] for r in replies if "ack" in r) == ["first", "third"]
    assert [e.id for e in await collector.until(2)] == ["first", "third"]


async def test_binary_frame_batch_limit_and_unicode(producer_ws, stack: Stack, collect, event_type):
    collector = await collect(types=[event_type])
    await producer_ws.send(b'{"type": "a", "value": 1}')
    assert json.loads(await producer_ws.recv())["error"] == "binary_frame"
    too_many = [{"type": event_type, "value": 1}] * (stack.settings.max_batch + 1)
    await producer_ws.send(json.dumps(too_many))
    reply = json.loads(await producer_ws.recv())
    assert reply["error"] == "batch_too_large" and str(stack.settings.max_batch) in reply["detail"]
    await producer_ws.send(json.dumps({"type": event_type, "value": 2, "id": "ünï-☃", "data": {"text": "日本"}}))
    assert json.loads(await producer_ws.recv())["ack"] == "ünï-☃"
    assert (await collector.until(1))[0].data == {"text": "日本"}


async def test_oversized_frame_closes_with_1009_and_the_service_stays_up(stack: Stack, producer_ws, collect,
                                                                         event_type):
    collector = await collect(types=[event_type])
    big = json.dumps({"type": event_type, "value": 1, "data": {"blob": "x" * stack.settings.max_frame_bytes}})
    await producer_ws.send(big)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await producer_ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
    headers = {"apikey": lab_key(stack.settings)}
    async with websockets.connect(stack.settings.produce_url, additional_headers=headers) as fresh:
        await send_valid_and_see_it(fresh, collector, event_type, 0)


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(stack: Stack, producer_ws, collect, event_type):
    # RFC 6455 section 8.1 requires failing the connection on invalid UTF-8 in a text frame.
    collector = await collect(types=[event_type])
    await producer_ws.send(b'{"type": "a\xff", "value": 1}', text=True)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await producer_ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.INVALID_DATA
    assert "invalid start byte" in closed.value.rcvd.reason
    headers = {"apikey": lab_key(stack.settings)}
    async with websockets.connect(stack.settings.produce_url, additional_headers=headers) as fresh:
        await send_valid_and_see_it(fresh, collector, event_type, 0)


async def test_sender_over_its_message_rate_gets_rate_limited_errors(stack: Stack, producer_ws, collect, event_type):
    collector = await collect(types=[event_type])
    limit = int(stack.settings.sender_rate_limit)
    frames = 2 * limit
    for i in range(frames):
        await producer_ws.send(json.dumps({"type": event_type, "value": i, "id": f"r{i}"}))
    replies = [json.loads(await producer_ws.recv()) for _ in range(frames)]
    limited = [r for r in replies if r.get("error") == "rate_limited"]
    acked = [r["ack"] for r in replies if "ack" in r]
    assert limited and all(r["id"] for r in limited)
    assert len(acked) + len(limited) == frames
    assert {e.id for e in await collector.until(len(acked))} == set(acked)
