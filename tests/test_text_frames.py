"""The consumer's frames, byte for byte against websockets' own serialisation (``text_frame``, ``write_frames_now``).

No process and no socket: a connection is a stand-in that records what would be written.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from labkit.services.wire import text_frame, write_frames_now


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_the_frame_websockets_would_send(size: int):
    payload = bytes(ord("a") + i % 26 for i in range(size))
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


def test_frames_written_at_once_are_the_bytes_websockets_would_send_for_each():
    """write_frames_now: the consumer's one way to write to watchers without awaiting, checked against websockets."""
    written: list[bytes] = []
    ws = SimpleNamespace(protocol=SimpleNamespace(state=State.OPEN), transport=SimpleNamespace(write=written.append))
    payloads = [b'{"a":1}', b"x" * 200, b""]
    write_frames_now(ws, [text_frame(p) for p in payloads])
    assert written == [b"".join(Frame(Opcode.TEXT, p).serialize(mask=False, extensions=[]) for p in payloads)]
    ws.protocol.state = State.CLOSING  # as broadcast() does: a connection that is not open is skipped
    write_frames_now(ws, [text_frame(b"late")])
    assert len(written) == 1
