"""What the gateway answered, read from its access log: the figures notebook 04 counts against its text.

The embedded gateway writes one line per request when it ends (``labkit logs gateway``)::

    2026-12-03T10:00:00+00:00 127.0.0.1 "GET /produce-events" 101 0.012 s, 230 bytes

A WebSocket's line comes when it closes, with status 101 for an upgrade that was let in.
"""

from __future__ import annotations

import re
from collections import Counter

from labkit.ops.stack import Stack

__all__ = ["gateway_answers"]

_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}) ')


def gateway_answers(stack: Stack, path: str, lines: int = 2000) -> Counter[int]:
    """How many requests to ``path`` the gateway answered with each status (101: a WebSocket let in)."""
    answers: Counter[int] = Counter()
    for line in stack.log_tail("gateway", lines).splitlines():
        match = _LINE.search(line)
        if match and match["path"] == path:
            answers[int(match["status"])] += 1
    return answers
