"""Notebook widgets: a form that sends events, and small views of the stack.

:class:`EventSender` is an ipywidgets form that sends events through the
gateway's ``/produce-events`` with :class:`labkit.client.Sender`, one connection
per form, on the kernel's asyncio loop, so the kernel never blocks::

    from labkit.lab.widgets import EventSender
    form = EventSender()
    form                                     # the form; click Send
    await form.send_burst(100, rate=50)      # or from code
    form.sent, form.acked, form.errors

:class:`StepProgress` is a progress bar for ``Stack.up(on_step=...)`` and
:func:`html_table` shows rows such as ``Stack.status()`` without pandas.
"""

from __future__ import annotations

import asyncio
import html
import random
import time
from collections import deque
from contextlib import aclosing
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w
import websockets
from IPython.display import HTML
from websockets.protocol import State

from labkit.client import Sender, SendError
from labkit.events import Ack, parse_json_object
from labkit.pacing import Schedule, due_ranges
from labkit.settings import Settings

__all__ = ["EventSender", "FormError", "StepProgress", "html_table"]

DEFAULT_TYPES = ("click", "view", "purchase", "tick")
REFRESH_S = 0.1  # the form redraws its counters and log at most this often
RED = "#c62828"
GREEN = "#2e7d32"


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class FormError(ValueError):
    """What is wrong with the form's input, in words shown under the form."""


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def html_table(rows: Sequence[Mapping[str, Any]]) -> HTML:
    """A plain HTML table (rows such as ``Stack.status()``), one column per key of the first row."""
    if not rows:
        return HTML("<i>nothing to show</i>")
    columns = list(rows[0])
    head = "".join(f"<th style='text-align:left;padding:2px 10px'>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td style='padding:2px 10px'>{html.escape(_cell(row.get(c)))}</td>" for c in columns)
        + "</tr>"
        for row in rows
    )
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


class StepProgress(w.VBox):
    """A progress bar to pass as ``Stack.up(on_step=progress)``: it is the callback."""

    def __init__(self, description: str = "stack") -> None:
        self.bar = w.IntProgress(value=0, min=0, max=1, description=description)
        self.label = w.Label("")
        super().__init__([w.HBox([self.bar, self.label])])

    def __call__(self, text: str, step: int, steps: int) -> None:
        self.bar.max = steps
        self.bar.value = step
        self.label.value = f"{step}/{steps} {text}"

    def done(self, text: str = "ready") -> None:
        self.bar.value = self.bar.max
        self.bar.bar_style = "success"
        self.label.value = text


def parse_data(text: str) -> dict[str, Any] | None:
    """The form's data field: empty means no data, else a JSON object; FormError says why not."""
    try:
        return parse_json_object(text)
    except ValueError as exc:
        raise FormError(str(exc)) from None


class EventSender(w.VBox):
    """A form that sends events through the gateway and logs Kafka's acks.

    ``sent``, ``acked`` and ``errors`` count events; :meth:`send` and
    :meth:`send_burst` do from code what the buttons do; :meth:`aclose` (or
    :meth:`close`, which finishes in the background) leaves no task and no
    connection behind.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        types: Sequence[str] = DEFAULT_TYPES,
        history: int = 8,
    ) -> None:
        self.settings = settings
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.last_error: str | None = None
        self.problem: str | None = None  # what is wrong with the form's input, as shown under it
        self._sender: Sender | None = None
        self._connecting = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._burst: asyncio.Task[Any] | None = None
        self._replies: deque[str] = deque(maxlen=history)
        self._refresh_pending = False
        self._burst_sent = 0
        self._closed = False

        self.type_box = w.Combobox(
            value=types[0] if types else "", options=list(types), ensure_option=False,
            description="type", placeholder="choose or type a name",
        )
        self.value_box = w.FloatText(value=1.0, description="value")
        self.key_box = w.Text(value="", description="key", placeholder="default: the type")
        self.data_box = w.Textarea(
            value="", description="data", placeholder='optional JSON object, e.g. {"page": "/home"}',
            layout=w.Layout(height="4em"),
        )
        self.message = w.HTML("")
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.send_button.add_class("labkit-send")
        self.burst_count = w.BoundedIntText(value=100, min=1, max=1_000_000, description="burst")
        self.burst_rate = w.BoundedFloatText(value=50.0, min=0.1, max=100_000, description="per second")
        self.burst_button = w.Button(description="Send burst", icon="forward")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="sent")
        self.counters = w.HTML("")
        self.counters.add_class("labkit-sender-counters")
        self.reply_log = w.HTML("")

        self.send_button.on_click(lambda _: self._spawn(self.send()))
        self.burst_button.on_click(lambda _: self._start_burst())
        self.stop_button.on_click(lambda _: self.stop_burst())
        self.data_box.observe(lambda _: self._check_data(), "value")
        self.type_box.observe(lambda _: self._show_message(""), "value")

        self.burst_count.layout = w.Layout(width="190px")
        self.burst_rate.layout = w.Layout(width="190px")
        super().__init__(
            [
                w.HTML("<b>Send events</b> through the gateway's <code>/produce-events</code>"),
                self.type_box,
                self.value_box,
                self.key_box,
                self.data_box,
                self.message,
                self.send_button,
                w.HBox([self.burst_count, self.burst_rate]),
                w.HBox([self.burst_button, self.stop_button]),
                self.progress,
                self.counters,
                self.reply_log,
            ],
            layout=w.Layout(width="460px"),
        )
        self._redraw()

    # -- the form ------------------------------------------------------------------

    def form_event(self) -> dict[str, Any]:
        """The event the form describes; FormError says what to fix."""
        kind = (self.type_box.value or "").strip()
        if not kind:
            raise FormError("type is empty: choose one or type a name")
        if len(kind) > 256:
            raise FormError(f"type is {len(kind)} characters long; at most 256")
        event: dict[str, Any] = {"type": kind, "value": self.value_box.value}
        key = self.key_box.value.strip()
        if key:
            event["key"] = key
        data = parse_data(self.data_box.value)
        if data is not None:
            event["data"] = data
        return event

    def _check_data(self) -> None:
        try:
            parse_data(self.data_box.value)
        except FormError as exc:
            self._show_message(str(exc))
        else:
            self._show_message("")

    def _show_message(self, text: str) -> None:
        self.problem = text or None
        self.message.value = f"<span style='color:{RED}'>{html.escape(text)}</span>" if text else ""

    # -- sending -------------------------------------------------------------------

    @property
    def sender(self) -> Sender | None:
        """The form's connection to the producer, if one is open or was opened last."""
        return self._sender

    @property
    def connected(self) -> bool:
        return self._sender is not None and self._sender.ws is not None and self._sender.ws.state is State.OPEN

    async def _connection(self) -> Sender:
        """The form's one connection, opened again if it closed."""
        async with self._connecting:
            if self._closed:
                raise RuntimeError("this EventSender is closed; make a new one")
            if not self.connected:
                await self._disconnect()
                sender = Sender(settings=self.settings)
                await sender.__aenter__()
                self._sender = sender
            assert self._sender is not None
            return self._sender

    async def _disconnect(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            await sender.close()

    async def send(self, event: Mapping[str, Any] | None = None) -> Ack | None:
        """Send one event (by default the form's) and wait for Kafka's ack.

        Returns the ack, or None when the form is invalid or the event was
        refused; the reason is shown in the form and counted in ``errors``.
        """
        try:
            item = dict(event) if event is not None else self.form_event()
        except FormError as exc:
            self._show_message(str(exc))
            return None
        self._show_message("")
        started = time.perf_counter()
        futures = await self._submit([item])
        if not futures:
            return None
        return await self._settle(futures[0], started)

    async def _submit(self, events: list[dict[str, Any]]) -> list[asyncio.Future[Ack]]:
        try:
            sender = await self._connection()
            futures = await sender.submit(events)
        except (OSError, websockets.InvalidStatus, websockets.ConnectionClosed, TimeoutError) as exc:
            self._record_error(f"cannot reach the producer at {self._url()}: {exc}", count=len(events))
            await self._disconnect()
            return []
        self.sent += len(events)
        self._refresh()
        return futures

    async def _settle(self, future: asyncio.Future[Ack], started: float) -> Ack | None:
        try:
            ack = await Sender.replies([future], raise_on_error=False)
        except SendError as exc:
            self._record_error(str(exc))
            return None
        return self._record_reply(ack[0], started)

    def _record_reply(self, ack: Ack, started: float) -> Ack | None:
        if not ack.ok:
            self._record_error(f"{ack.error}: {ack.detail}")
            return None
        self.acked += 1
        rtt = (time.perf_counter() - started) * 1000
        cells = (html.escape((ack.ack or "")[:12]), ack.partition, ack.offset, f"{rtt:.1f}")
        self._replies.appendleft("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        self._refresh()
        return ack

    def _record_error(self, text: str, count: int = 1) -> None:
        self.errors += count
        self.last_error = text
        self._replies.appendleft(f"<tr><td colspan=4 style='color:{RED}'>{html.escape(text)}</td></tr>")
        self._refresh()

    def _url(self) -> str:
        return self._sender.url if self._sender is not None else "the gateway"

    # -- bursts ----------------------------------------------------------------------

    async def send_burst(self, count: int | None = None, rate: float | None = None) -> int:
        """Send ``count`` events of the form's type at ``rate`` per second; return how many were acked.

        Values wander from the form's value (a random walk) so a chart has
        something to draw. Acks are not awaited one by one: events are
        pipelined and each ack is logged as it arrives. The Stop button (or
        :meth:`stop_burst`) ends the burst early.
        """
        count = self.burst_count.value if count is None else count
        rate = self.burst_rate.value if rate is None else rate
        if count < 1 or rate <= 0:
            self._show_message("a burst needs a count of at least 1 and a rate above 0")
            return 0
        try:
            template = self.form_event()
        except FormError as exc:
            self._show_message(str(exc))
            return 0
        self._show_message("")
        self.progress.max, self.progress.value, self.progress.bar_style = count, 0, ""
        self.stop_button.disabled = False
        acked_before = self.acked
        pending: list[asyncio.Task[Any]] = []
        value = float(template["value"])
        self._burst_sent = 0
        try:
            async with aclosing(due_ranges(Schedule.from_now(rate, count))) as ranges:
                async for first, end in ranges:
                    for index in range(first, end):
                        started = time.perf_counter()
                        futures = await self._submit([{**template, "value": round(value, 3)}])
                        if not futures:
                            break
                        pending.append(self._spawn(self._settle(futures[0], started)))
                        value += random.gauss(0, 1)
                        self._burst_sent = index + 1
                    else:
                        continue
                    break
            await asyncio.gather(*pending)
        finally:
            self.stop_button.disabled = True
            self._redraw()
            self.progress.bar_style = "success" if self._burst_sent == count else "warning"
        return self.acked - acked_before

    def _start_burst(self) -> None:
        if self._burst is not None and not self._burst.done():
            self._show_message("a burst is already running: stop it first")
            return
        self._burst = self._spawn(self.send_burst())

    def stop_burst(self) -> None:
        """End the running burst (the events already sent still get their acks logged)."""
        if self._burst is not None:
            self._burst.cancel()

    # -- tasks, redraws, closing --------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        # Button callbacks run on the kernel's event loop (ipykernel handles every message in it).
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._record_error(f"{type(task.exception()).__name__}: {task.exception()}")

    def _refresh(self) -> None:
        """Redraw counters and log soon, at most every REFRESH_S, however fast acks come."""
        if self._refresh_pending:
            return
        self._refresh_pending = True
        try:
            asyncio.get_running_loop().call_later(REFRESH_S, self._redraw)
        except RuntimeError:
            self._redraw()

    def _redraw(self) -> None:
        self._refresh_pending = False
        self.progress.value = self._burst_sent
        color = RED if self.errors else GREEN
        self.counters.value = (
            f"sent <b>{self.sent}</b> · acked <b>{self.acked}</b> · "
            f"<span style='color:{color}'>errors <b>{self.errors}</b></span>"
        )
        if self._replies:
            head = "<tr><th>ack id</th><th>partition</th><th>offset</th><th>round trip ms</th></tr>"
            rows = "".join(self._replies)
            self.reply_log.value = f"<table style='font-size:90%;border-spacing:10px 0'>{head}{rows}</table>"

    @property
    def busy(self) -> bool:
        """True while a send or a burst is under way."""
        return any(not task.done() for task in self._tasks)

    def close(self) -> None:
        """Stop sending, close the connection (in the background) and the widgets."""
        if not self._closed:
            self._closed = True
            for task in list(self._tasks):
                task.cancel()
            if self._sender is not None and _loop_running():
                self._spawn(self._disconnect())
            # else: no loop runs (garbage collection, interpreter exit) and the socket goes with the process
            for child in self.children:
                for widget in getattr(child, "children", ()):
                    widget.close()
                child.close()
        super().close()

    async def aclose(self) -> None:
        """Close, and return once no task and no connection is left."""
        self.close()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
