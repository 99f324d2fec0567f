"""A frame that closes the connection (1009 too big, 1007 not UTF-8) never costs the acks of the events before it.

A plain websockets client, straight to the producer: the acks come first, then
the close with its code.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.frames import CloseCode

from labkit import Stack

VALID_EVENTS = 200


async def acks_then_close(stack: Stack, closing_frame: str | bytes) -> tuple[list[str], websockets.ConnectionClosed]:
    """Send VALID_EVENTS valid events, one per frame, then ``closing_frame``; read until the close."""
    settings = stack.settings
    ids = [f"before-close-{i}" for i in range(VALID_EVENTS)]
    acked: list[str] = []
    async with websockets.connect(settings.url(settings.producer_port), max_size=None) as ws:
        for event_id in ids:
            await ws.send(json.dumps({"type": "close-test", "value": 1, "id": event_id}))
        await ws.send(closing_frame, text=True)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(60):
                while True:
                    reply = json.loads(await ws.recv())
                    assert "ack" in reply, reply
                    acked.append(reply["ack"])
    assert acked == ids, f"{len(acked)} of {VALID_EVENTS} acks arrived before the close"
    return acked, closed.value


async def test_an_oversized_frame_closes_with_1009_after_every_earlier_ack(stack: Stack):
    big = json.dumps({"type": "close-test", "value": 1, "data": {"blob": "x" * stack.settings.max_frame_bytes}})
    _acked, closed = await acks_then_close(stack, big)
    assert closed.rcvd is not None and closed.rcvd.code == CloseCode.MESSAGE_TOO_BIG


async def test_invalid_utf8_closes_with_1007_after_every_earlier_ack(stack: Stack):
    _acked, closed = await acks_then_close(stack, b'{"type": "a\xff", "value": 1}')
    assert closed.rcvd is not None and closed.rcvd.code == CloseCode.INVALID_DATA
    assert "invalid start byte" in closed.rcvd.reason
