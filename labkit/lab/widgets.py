"""Notebook widgets: a form that sends events, and a progress bar for starting the stack.

:class:`EventSender` is an ipywidgets form that sends events through the
gateway's ``/produce-events`` with :class:`labkit.client.Sender`, one connection
per form, on the kernel's asyncio loop, so the kernel never blocks::

    from labkit.lab.widgets import EventSender
    form = EventSender()
    form                                     # the form; click Send
    await form.send_burst(100, rate=50)      # or from code
    form.sent, form.acked, form.errors

The form checks what it sends with the event model itself (:func:`labkit.client.as_event`,
:func:`labkit.events.parse_json_object`, the producer's frame limit), so it refuses
exactly what the producer would, in red under the field concerned, before sending.
Numbers are typed as text and read by the form: what it cannot take is said, never
silently replaced.

:class:`StepProgress` is a progress bar for ``Stack.up(on_step=...)``; tables are
in :mod:`labkit.lab.tables` (``html_table`` is re-exported here).
"""

from __future__ import annotations

import asyncio
import html
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from typing import Any

import ipywidgets as w
import websockets
from traitlets import CUnicode
from websockets.protocol import State

from labkit.client import Sender, SendError
from labkit.discovery import running_settings
from labkit.events import Ack, Event
from labkit.lab.form_rules import FormError, checked_event, parse_number, read_burst, read_event
from labkit.lab.palette import GREEN, RED
from labkit.lab.tables import Styled, html_table
from labkit.lab.tasks import cancel, close_tree
from labkit.pacing import Schedule, due_ranges
from labkit.settings import Settings

__all__ = ["EventSender", "FormError", "StepProgress", "html_table", "parse_number"]

DEFAULT_TYPES = ("click", "view", "purchase", "tick")
REFRESH_S = 0.1  # the form redraws its counters and log at most this often
# A burst's events due within this long go in one frame (one write, one task awaiting their acks), as notebook 05's
# load does: one frame and one pacer wake-up per event cost the kernel about 0.25 ms each at 1,000 events a second,
# a quarter of a core that a live chart in the same kernel then lacked on a busy machine (2026-12-04).
BURST_FRAME_S = 0.01
REPLY_COLUMNS = ("ack id", "partition", "offset", "round trip ms")  # the form's log of replies, newest first
BURST_RUNNING = "a burst is already running: stop it first"


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class NumberText(w.Text):
    """A text box for a number: the form reads what was typed, so nothing is silently replaced.

    A number set from code (``form.value_box.value = 20.0``) is kept as its text.
    """

    value = CUnicode("", help="The number as typed.").tag(sync=True)


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

    def done(self, text: str = "ready", description: str = "stack") -> None:
        """Fill the bar and say how it ended; the bar's own label ("starting") gives way to ``description``."""
        self.bar.value = self.bar.max
        self.bar.description = description
        self.bar.bar_style = "success"
        self.label.value = text


class EventSender(w.VBox):
    """A form that sends events through the gateway and logs Kafka's acks.

    ``sent``, ``acked`` and ``errors`` count events that left the form (an event it
    refuses is never sent, nor counted); ``problems`` maps each field to what is wrong
    with it, as shown in red under it. :meth:`send` and :meth:`send_burst` do from code
    what the buttons do; :meth:`aclose` (or :meth:`close`, which finishes in the
    background) leaves no task and no connection behind.
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
        self.problems: dict[str, str] = {}  # field -> what is wrong with it, as shown under it
        self.max_frame_bytes = running_settings(settings).max_frame_bytes  # the producer's limit
        self._sender: Sender | None = None
        self._connecting = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._burst: asyncio.Task[Any] | None = None
        self._replies: deque[dict[str, Any]] = deque(maxlen=history)
        self._refresh_pending = False
        self._burst_sent = 0
        self._walk = 0.0  # a burst's values wander from the form's value
        self._closed = False

        self.type_box = w.Combobox(
            value=types[0] if types else "", options=list(types), ensure_option=False,
            description="type", placeholder="choose or type a name",
        )
        self.value_box = NumberText(value="1", description="value", placeholder="a number, e.g. 1 or 2.5")
        self.key_box = w.Text(value="", description="key", placeholder="default: the type")
        self.data_box = w.Textarea(
            value="", description="data", placeholder='optional JSON object, e.g. {"page": "/home"}',
            layout=w.Layout(height="4em"),
        )
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.send_button.add_class("labkit-send")
        self.burst_count = NumberText(value="100", description="burst", placeholder="events")
        self.burst_rate = NumberText(value="50", description="per second", placeholder="events per second")
        self.burst_button = w.Button(description="Send burst", icon="forward")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="sent")
        # What the burst is doing, or why it ended early, in words. Its own width: a Label in an HBox otherwise
        # keeps a narrow one and cuts the words ("stopped: you pressed Stop, after" lost its "31 of 500").
        self.burst_note = w.Label("", layout=w.Layout(width="auto", flex="1 0 auto"))
        self.burst_note.add_class("labkit-burst-note")
        self.counters = w.HTML("")
        self.counters.add_class("labkit-sender-counters")
        self.reply_log = w.HTML("")
        self.reply_log.add_class("labkit-ack-log")
        fields = {"type": self.type_box, "value": self.value_box, "key": self.key_box, "data": self.data_box,
                  "burst": self.burst_count, "rate": self.burst_rate}
        self.messages = {name: w.HTML("") for name in [*fields, "form"]}
        for name, message in self.messages.items():
            message.add_class(f"labkit-problem-{name}")
        for box in fields.values():
            box.observe(lambda _: self.check(), "value")

        self.send_button.on_click(lambda _: self._spawn(self.send()))
        self.burst_button.on_click(lambda _: self._start_burst())
        self.stop_button.on_click(lambda _: self.stop_burst())

        self.burst_count.layout = w.Layout(width="190px")
        self.burst_rate.layout = w.Layout(width="190px")
        m = self.messages
        super().__init__(
            [
                w.HTML("<b>Send events</b> through the gateway's <code>/produce-events</code>"),
                self.type_box, m["type"], self.value_box, m["value"], self.key_box, m["key"],
                self.data_box, m["data"], self.send_button, m["form"],
                w.HBox([self.burst_count, self.burst_rate]), w.HBox([m["burst"], m["rate"]]),
                w.HBox([self.burst_button, self.stop_button]),
                w.HBox([self.progress, self.burst_note]),
                self.counters,
                self.reply_log,
            ],
            layout=w.Layout(width="460px"),
        )
        self._redraw()

    # -- the form ------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        """The first problem shown (None when the form is fine)."""
        return next(iter(self.problems.values()), None)

    def _read_event(self, problems: dict[str, str]) -> dict[str, Any]:
        """The event the form describes; what is wrong goes into ``problems``, by field."""
        event, found = read_event(self.type_box.value, self.value_box.value, self.key_box.value, self.data_box.value)
        problems.update(found)
        return event

    def _frame_problem(self, event: Mapping[str, Any] | Event, problems: dict[str, str]) -> Event | None:
        item, found = checked_event(event, self.max_frame_bytes)
        problems.update({field if field in self.messages else "form": text for field, text in found.items()})
        return item

    def _burst_problems(self, problems: dict[str, str]) -> tuple[int, float]:
        count, rate, found = read_burst(self.burst_count.value, self.burst_rate.value)
        problems.update(found)
        return count, rate

    def check(self, burst: bool = False) -> dict[str, str]:
        """Check every field now (as each keystroke does) and show what is wrong under it.

        Burst fields block only bursts, but are always shown.
        """
        problems: dict[str, str] = {}
        event = self._read_event(problems)
        if not problems:
            self._frame_problem(event, problems)
        shown = dict(problems)
        self._burst_problems(shown)
        if not burst and (running := self.problems.get("burst")) == BURST_RUNNING:
            shown["burst"] = running
        self._show(shown)
        return problems if not burst else {k: v for k, v in shown.items() if v != BURST_RUNNING}

    def _show(self, problems: dict[str, str]) -> None:
        self.problems = problems
        for name, message in self.messages.items():
            text = problems.get(name)
            message.value = f"<span style='color:{RED};font-size:90%'>{html.escape(text)}</span>" if text else ""

    def form_event(self) -> dict[str, Any]:
        """The event the form describes; FormError says what to fix (each problem also shows under its field)."""
        problems = self.check()
        if problems:
            raise FormError("; ".join(problems.values()))
        return self._read_event({})

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
                self.max_frame_bytes = sender.settings.max_frame_bytes
            assert self._sender is not None
            return self._sender

    async def _disconnect(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            await sender.close()

    def _checked(self, event: Mapping[str, Any] | Event) -> Event | None:
        """The event ready to send, or None with its problem shown under its field."""
        problems: dict[str, str] = {}
        item = self._frame_problem(event, problems)
        if item is None:
            self._show({**self.problems, **problems})
        return item

    async def send(self, event: Mapping[str, Any] | None = None) -> Ack | None:
        """Send one event (by default the form's) and wait for Kafka's ack.

        Returns the ack, or None when the form or the event is invalid (nothing is
        sent; the problem shows in red under its field) or the event was refused by
        the producer (counted in ``errors`` and logged).
        """
        if event is None:
            if self.check():
                return None
            event = self._read_event({})
        item = self._checked(event)
        if item is None:
            return None
        started = time.perf_counter()
        futures = await self._submit([item])
        if not futures:
            return None
        return (await self._settle(futures, started))[0]

    async def _submit(self, events: list[Event]) -> list[asyncio.Future[Ack]]:
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

    async def _settle(self, futures: list[asyncio.Future[Ack]], started: float) -> list[Ack | None]:
        """Wait for the replies of events sent together; each logged, an ack or None for each."""
        try:
            acks = await Sender.replies(futures, raise_on_error=False)
        except SendError as exc:
            self._record_error(str(exc), count=len(futures))
            return [None] * len(futures)
        return [self._record_reply(ack, started) for ack in acks]

    def _record_reply(self, ack: Ack, started: float) -> Ack | None:
        if not ack.ok:
            self._record_error(f"{ack.error}: {ack.detail}")
            return None
        self.acked += 1
        rtt = (time.perf_counter() - started) * 1000
        self._replies.appendleft({"ack id": (ack.ack or "")[:12], "partition": ack.partition, "offset": ack.offset,
                                  "round trip ms": round(rtt, 1)})
        self._refresh()
        return ack

    def _record_error(self, text: str, count: int = 1) -> None:
        self.errors += count
        self.last_error = text
        self._replies.appendleft({"ack id": Styled(text, f"color:{RED}", span=4)})
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
        if count is not None:
            self.burst_count.value = count
        if rate is not None:
            self.burst_rate.value = rate
        if self.check(burst=True):
            return 0
        count, rate = self._burst_problems({})
        template = self._read_event({})
        self.progress.max, self.progress.value, self.progress.bar_style = count, 0, ""
        self.stop_button.disabled = False
        acked_before = self.acked
        pending: list[asyncio.Task[Any]] = []
        self._walk = float(template["value"])
        self._burst_sent = 0
        self.burst_note.value = f"sending {count:,} at {rate:g}/s"
        ended = "stopped: an event could not be sent (see the log)"
        try:
            async with aclosing(due_ranges(Schedule.from_now(rate, count), frame_interval_s=BURST_FRAME_S)) as ranges:
                async for first, end in ranges:
                    if not await self._send_range(template, first, end, pending):
                        break
            await asyncio.gather(*pending)
        except asyncio.CancelledError:
            ended = "stopped: you pressed Stop"
            raise
        finally:
            self.stop_button.disabled = True
            if self.problems.get("burst") == BURST_RUNNING:
                self._show({k: v for k, v in self.problems.items() if k != "burst"})
            self._redraw()
            complete = self._burst_sent == count
            self.progress.bar_style = "success" if complete else "warning"
            self.burst_note.value = (f"sent all {count:,}" if complete
                                     else f"{ended}, after {self._burst_sent:,} of {count:,}")
        return self.acked - acked_before

    async def _send_range(
        self, template: dict[str, Any], first: int, end: int, pending: list[asyncio.Task[Any]]
    ) -> bool:
        """Send the events due now in one frame (max_batch at most each); False when they could not be sent."""
        items = []
        for _ in range(first, end):
            item = self._checked({**template, "value": round(self._walk, 3)})
            if item is None:
                return False
            items.append(item)
            self._walk += random.gauss(0, 1)
        batch = (self.settings or Settings()).max_batch
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            started = time.perf_counter()
            futures = await self._submit(chunk)
            if not futures:
                return False
            pending.append(self._spawn(self._settle(futures, started)))
            self._burst_sent += len(chunk)
        return True

    def _start_burst(self) -> None:
        if self._burst is not None and not self._burst.done():
            self._show({**self.problems, "burst": BURST_RUNNING})
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
            self.reply_log.value = html_table(list(self._replies), REPLY_COLUMNS, style="font-size:90%").data

    @property
    def busy(self) -> bool:
        """True while a send or a burst is under way."""
        return any(not task.done() for task in self._tasks)

    def close(self) -> None:
        """Stop sending, close the connection (in the background) and the widgets."""
        if not self._closed:
            self._closed = True
            cancel(list(self._tasks))
            if self._sender is not None and _loop_running():
                self._spawn(self._disconnect())
            # else: no loop runs (garbage collection, interpreter exit) and the socket goes with the process
            close_tree(self)
        super().close()

    async def aclose(self) -> None:
        """Close, and return once no task and no connection is left."""
        self.close()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
