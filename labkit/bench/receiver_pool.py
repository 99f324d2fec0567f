"""The bench's handle on its receiver processes (:mod:`labkit.bench.receiver_process`), and what they say.

``connections`` watchers are spread over ``processes`` child processes (and, when
several ``urls`` are given, over those URLs: process ``i`` watches ``urls[i % n]``);
each command goes to all of them and their answers are merged, so the caller sees
one receiver with many connections. The messages (JSON lines) are the structs below;
the receiver process imports them from here, the bench never imports it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Literal

import msgspec

__all__ = ["Receivers", "ReceiverFailed", "ReceiverSpec", "ConnectionReport", "TagReport"]

READY_TIMEOUT_S = 120.0  # a thousand WebSocket handshakes through the gateway, on a busy machine


class ReceiverSpec(msgspec.Struct):
    kind: Literal["websocket", "kafka"]
    connections: int = 1
    url: str = ""
    types: list[str] = []
    kafka_config: dict[str, object] = {}
    pause_when_idle: bool = True  # as the consumer service reads: paused only on a broker that does not long-poll
    topic: str = ""
    open_concurrency: int = 64


class ConnectionReport(msgspec.Struct):
    seqs: list[int]
    latency_ms: list[float]


class TagReport(msgspec.Struct):
    tag: str
    connections: list[ConnectionReport]
    # From the first connection only: seq, sent_at, received_at, kafka_ts, delivered_at, arrival.
    stamps: list[tuple[int, float, float, float, float, float]]
    closed: list[str]  # connections that ended, and why


class ReceiverFailed(RuntimeError):
    """A receiver process could not connect, or stopped answering."""


class Receivers:
    """``async with Receivers(spec, processes, log_dir) as receivers:`` then prime, drain."""

    def __init__(self, spec: ReceiverSpec, processes: int, log_dir: Path, urls: list[str] | None = None) -> None:
        self.spec = spec
        self.urls = urls or [spec.url]
        self.processes = max(1, min(max(processes, len(self.urls)), spec.connections))
        self.log_dir = log_dir
        self.children: list[asyncio.subprocess.Process] = []

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    async def __aenter__(self) -> Receivers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        share, extra = divmod(self.spec.connections, self.processes)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            for index in range(self.processes):
                spec = msgspec.structs.replace(self.spec, connections=share + (1 if index < extra else 0),
                                               url=self.urls[index % len(self.urls)])
                with (self.log_dir / f"bench-receiver-{index}.log").open("ab") as log:
                    child = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "labkit.bench.receiver_process", msgspec.json.encode(spec).decode(),
                        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
                        limit=1 << 30,
                    )
                self.children.append(child)
            answers = await asyncio.gather(*(self._answer(c, READY_TIMEOUT_S) for c in self.children))
        except BaseException:
            await self.close()
            raise
        closed = [reason for answer in answers for reason in answer.get("closed", [])]
        if closed:
            await self.close()
            raise ReceiverFailed(f"{len(closed)} of {self.spec.connections} watchers could not connect: {closed[0]}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _answer(self, child: asyncio.subprocess.Process, timeout: float) -> dict:
        assert child.stdout is not None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), timeout)
        except TimeoutError:
            raise ReceiverFailed(f"receiver {child.pid} did not answer within {timeout:.0f} s; see {self.log_dir}") from None
        if not line:
            raise ReceiverFailed(f"receiver {child.pid} exited; see its log in {self.log_dir}")
        return msgspec.json.decode(line)

    async def _ask(self, command: dict, timeout: float) -> list[dict]:
        payload = msgspec.json.encode(command) + b"\n"
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write(payload)
        return list(await asyncio.gather(*(self._answer(child, timeout) for child in self.children)))

    async def prime(self, tag: str, partitions: int, timeout_s: float = 10.0) -> bool:
        """True once every connection has seen tag ``tag`` on every partition."""
        answers = await self._ask({"cmd": "prime", "tag": tag, "partitions": partitions, "timeout_s": timeout_s},
                                  timeout_s + 30)
        return all(answer["primed"] for answer in answers)

    async def drain(self, tag: str, expect: int, quiet_s: float, limit_s: float) -> TagReport:
        """Wait for ``expect`` events of ``tag`` on every connection; everything that came, merged."""
        command = {"cmd": "drain", "tag": tag, "expect": expect, "quiet_s": quiet_s, "limit_s": limit_s}
        answers = await self._ask(command, limit_s + 60)
        reports = [msgspec.convert(answer, TagReport) for answer in answers]
        connections: list[ConnectionReport] = [c for report in reports for c in report.connections]
        closed = [reason for report in reports for reason in report.closed]
        return TagReport(tag, connections, reports[0].stamps, closed)

    async def close(self) -> None:
        for child in self.children:
            if child.returncode is None and child.stdin is not None:
                try:
                    child.stdin.write(b'{"cmd": "quit"}\n')
                    child.stdin.close()
                except (BrokenPipeError, ConnectionResetError):
                    pass
        for child in self.children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
        self.children = []
