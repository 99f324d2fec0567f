"""Break a stack on purpose, from a notebook, and count what a resuming watcher got back.

:class:`FaultDrill` stops one component of a running stack while events are sent
through the gateway and a :func:`labkit.client.watch` receives them, starts it
again (``Stack.start_component``), and then compares the ids the producer
acknowledged with the ids the watcher received::

    drill = FaultDrill(stack, chart=chart)   # a progress bar and the table of faults so far; marks them on the chart
    drill
    row = await drill.run("consumer")     # also "gateway", "broker", or LOST_LOG
    row.missing, row.recovered, row.reason

``LOST_LOG`` is the fault an in-memory broker suffers at every restart: the
consumer stops (the watcher is away), events are acked meanwhile, the broker stops
and its data folder is wiped, and both start again. The watcher resumes from
offsets of a log that is gone, and hears ``recovered: false``.
"""

from __future__ import annotations

import asyncio
import html
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as w

from labkit.client import Watch
from labkit.event_stream import EventStream
from labkit.lab.palette import RED
from labkit.lab.tables import html_table
from labkit.ops.brokers import broker_kind
from labkit.ops.stack import Stack
from labkit.waiting import until

__all__ = ["FaultDrill", "FaultResult", "LOST_LOG", "LEADER", "FAULTS"]

LOST_LOG = "lost log"
LEADER = "leader"  # on a Kafka cluster (--nodes 3)
#: What each fault does while the part is down, in words for the table.
FAULTS = {
    "consumer": "watchers cut off; the producer goes on acking; the watcher resumes from its last offsets",
    "gateway": "senders and watchers cut off; both reconnect when it is back",
    "broker": "the producer holds events until the broker is back, then acks them; watchers stay connected",
    LOST_LOG: "consumer down, events acked, then the broker restarts without its data: those events are gone",
    LEADER: "kill -9 of the Kafka node leading partition 0: an in-sync replica takes over, the producer resends to it",
}
WAIT_S = 60.0  # longest wait for any one condition of a drill (a fresh Kafka log after a lost one takes a while)
DOWN_S = 5.0  # how long a part stays down at least: long enough to see "not connected" on a chart


class _Receiver:
    """A watcher of one type that keeps the ids it received and how its resumes went."""

    def __init__(self, stack: Stack, event_type: str) -> None:
        self.opened = asyncio.Event()
        self.ids: set[str] = set()
        self.watch = Watch(types=[event_type], settings=stack.settings, opened=self.opened, report_gap=False)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for event in self.watch:
            if isinstance(event.id, str):  # a record written to Kafka by hand may have none
                self.ids.add(event.id)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class FaultResult:
    """One fault: what was stopped, what happened, and the count of acked, received and missing events."""

    fault: str
    what_happened: str
    acked: int = 0
    received: int = 0
    missing: int = 0
    recovered: bool | None = None
    reason: str | None = None
    seconds: float = 0.0
    # Acked and not yet received when the watcher was cut off, plus acked until it was back (consumer, lost log).
    acked_while_away: int = 0
    missing_ids: set[str] = field(default_factory=set, repr=False)

    def row(self) -> dict[str, object]:
        shown = {None: "— (never cut off)", True: "true", False: "false"}[self.recovered]
        return {"fault": self.fault, "what happened": self.what_happened, "acked": self.acked,
                "acked while away": self.acked_while_away, "received": self.received, "missing": self.missing,
                "recovered": shown,
                "reason": self.reason or "", "seconds": f"{self.seconds:.1f}"}


class FaultDrill(w.VBox):
    """Runs faults one at a time on ``stack`` and shows a progress bar and a table of the results."""

    def __init__(self, stack: Stack, *, chart: Any = None, down_s: float = DOWN_S) -> None:
        self.stack = stack
        self.chart = chart  # a LiveChart on ``stack``: each fault is shaded on its time axis, named after it
        self.down_s = down_s
        self.results: list[FaultResult] = []
        self.problem: str | None = None
        self.progress = w.IntProgress(value=0, min=0, max=6, description="fault")
        self.step = w.Label("")
        self.table = w.HTML("<i>no fault yet</i>")
        self.table.add_class("labkit-fault-table")
        self.message = w.HTML("")
        super().__init__([w.HBox([self.progress, self.step]), self.message, self.table])

    def button(self, fault: str, description: str) -> w.Button:
        """A button that runs ``fault`` (one run at a time; a click while one runs is ignored)."""
        button = w.Button(description=description, button_style="danger", layout=w.Layout(width="auto"))

        def clicked(_: w.Button) -> None:
            if button.disabled:
                return
            button.disabled = True
            task = asyncio.get_running_loop().create_task(self.run(fault))
            task.add_done_callback(lambda _: setattr(button, "disabled", False))

        button.on_click(clicked)
        return button

    def _report(self, number: int, text: str) -> None:
        self.progress.value = number
        self.step.value = text

    def _show(self) -> None:
        rows = [result.row() for result in self.results]
        self.table.value = html_table(rows, row_style=lambda row: f"color:{RED}" if row["missing"] else "").data

    async def run(self, fault: str, *, settle_events: int = 30) -> FaultResult | None:
        """Stop ``fault``'s component mid-stream, start it again, and count what the watcher got back.

        A fault it does not know is shown in red (and kept in ``problem``); it returns None then.
        """
        if fault not in FAULTS:
            self.problem = f"{fault!r} is not a fault here: choose one of {', '.join(map(repr, FAULTS))}"
            self.message.value = f"<span style='color:{RED}'>{html.escape(self.problem)}</span>"
            return None
        self.problem = None
        self.message.value = ""
        self.progress.bar_style = ""
        # The events' type (a chart's trace) is named after the fault; a second run of one fault gets a number.
        runs = sum(r.fault == fault for r in self.results)
        kind = f"{fault.replace(' ', '-')}-fault" + (f"-{runs + 1}" if runs else "")
        result = FaultResult(fault, FAULTS[fault])
        began = time.monotonic()
        receiver = _Receiver(self.stack, kind)
        stream: EventStream | None = None
        try:
            self._report(1, "watching, then sending")
            await until(receiver.opened.is_set, "the watcher did not connect")
            stream = EventStream(self.stack.settings, kind)
            await stream.grows_by(settle_events, "the stream did not start")
            self._report(2, f"stopping the {fault}")
            down_at = self.chart.now() if self.chart is not None else 0.0
            restart_from, chart_at_restart = await self._break(fault, stream, receiver, result, kind)
            if self.chart is not None:
                self.chart.mark(f"{fault} down", down_at)
            self._report(5, "sending after the restart, then waiting for every acked event")
            await stream.grows_by(settle_events, f"no event was acked after the {fault} came back")
            await stream.stop()
            # After a lost log, what was acked before the restart may be gone: wait for what came after.
            expected = {ack.ack for ack in stream.acks[restart_from:]} if fault == LOST_LOG else stream.acked
            await until(lambda: expected <= receiver.ids,
                        lambda: f"{len(expected - receiver.ids)} acked events did not arrive",
                        WAIT_S)
            if self._charted(kind):  # the chart shows the fault whole (its resume, too) before the next one
                self._report(5, "waiting for the chart to catch up")
                await self.chart.wait_for(chart_at_restart + len(expected), kind, WAIT_S)
        finally:
            if stream is not None:
                await stream.stop()
            await receiver.stop()
        result.acked, result.received = len(stream.acked), len(receiver.ids & stream.acked)
        result.missing_ids = stream.acked - receiver.ids
        result.missing = len(result.missing_ids)
        result.recovered, result.reason = receiver.watch.recovered, receiver.watch.reason
        result.seconds = time.monotonic() - began
        self.results.append(result)
        self._report(6, f"{fault}: done")
        self.progress.bar_style = "success" if not result.missing else "warning"
        self._show()
        return result

    def _charted(self, kind: str) -> bool:
        """A chart that still watches and shows events of ``kind`` (a stopped one would wait in vain)."""
        return (self.chart is not None and self.chart.running
                and (not self.chart.types or kind in self.chart.types))

    async def _break(self, fault: str, stream: EventStream, receiver: _Receiver, result: FaultResult,
                     kind: str) -> tuple[int, int]:
        """Stop and start the part; return how many acks came before the (last) restart, and how many
        events of ``kind`` the chart held then (after a lost log, it is owed only what came after)."""
        stack = self.stack
        stopped_at = time.monotonic()

        async def hold() -> None:
            """Keep the part down for ``down_s`` in all: a pace for the eye, not a wait for a condition."""
            await asyncio.sleep(max(0.0, self.down_s - (time.monotonic() - stopped_at)))

        def away() -> int:
            # Not received when the watcher was cut off, then acked until now: the consumer stops reading a
            # moment before it closes its watchers, so a few acked just before the cut count as away too.
            return len(unseen_at_cut | {ack.ack for ack in stream.acks[before:] if ack.ack})

        if fault == "consumer":
            await asyncio.to_thread(stack.stop_component, "consumer")
            await until(lambda: not receiver.opened.is_set(), "the watcher did not notice the consumer stopped")
            self._report(3, "the consumer is down: the producer still acks")
            before, unseen_at_cut = len(stream.acks), stream.acked - receiver.ids
            await stream.grows_by(20, "no event was acked while the consumer was down")
            await hold()
            result.acked_while_away = away()
            self._report(4, "starting the consumer")
            await asyncio.to_thread(stack.start_component, "consumer")
        elif fault == "gateway":
            failed = stream.failed_connections
            await asyncio.to_thread(stack.stop_component, "gateway")
            await until(lambda: not receiver.opened.is_set() and stream.failed_connections > failed,
                         "the sender and the watcher did not notice the gateway stopped")
            self._report(3, "the gateway is down: nobody gets through")
            await hold()
            self._report(4, "starting the gateway")
            await asyncio.to_thread(stack.start_component, "gateway")
        elif fault == "broker":
            await asyncio.to_thread(stack.stop_component, "broker")

            def held() -> bool:
                return stack.health("producer")["in_flight"] > 0

            self._report(3, "the broker is down: the producer holds what is sent")
            await until(held, "the producer held no event while the broker was down")
            await hold()
            self._report(4, "starting the broker")
            await asyncio.to_thread(stack.start_component, "broker")
        elif fault == LEADER:
            leader = (await asyncio.to_thread(stack.partitions))[0]["leader"]
            await asyncio.to_thread(stack.kill_component, f"broker-{leader}")
            self._report(3, f"broker-{leader}, the leader of partition 0, was killed: waiting for a new leader")

            def elected() -> bool:
                rows = stack.partitions()
                return bool(rows) and rows[0]["leader"] not in (leader, -1)

            await until(elected, "no other node took over partition 0")
            result.what_happened = (f"broker-{leader} led partition 0 and was killed (kill -9); "
                                    f"broker-{stack.partitions()[0]['leader']} took over")
            await hold()
            self._report(4, f"starting broker-{leader}: it catches up and rejoins the in-sync replicas")
            await asyncio.to_thread(stack.start_component, f"broker-{leader}")
        else:  # LOST_LOG
            await asyncio.to_thread(stack.stop_component, "consumer")
            await until(lambda: not receiver.opened.is_set(), "the watcher did not notice the consumer stopped")
            self._report(3, "the consumer is down; events are acked, then the broker loses its log")
            before, unseen_at_cut = len(stream.acks), stream.acked - receiver.ids
            await stream.grows_by(20, "no event was acked while the consumer was down")
            await hold()
            # Sending pauses across the restart, so each ack is from one log: the lost one (counted before
            # the restart) or the new one. A batch acked half by each would count the lost half as expected.
            await stream.pause()
            await asyncio.to_thread(stack.stop_component, "broker")
            result.acked_while_away = away()  # stored only in the log about to be lost
            await asyncio.to_thread(lose_broker_log, stack)
            self._report(4, "starting the consumer on the new, empty log")
            await asyncio.to_thread(stack.start_component, "consumer")
            restarted_at = len(stream.acks)
            stream.resume()
            return restarted_at, self.chart.counts[kind] if self._charted(kind) else 0
        return len(stream.acks), 0


def lose_broker_log(stack: Stack) -> None:
    """Stop the broker (if it runs), delete its data folder, start it again.

    That is what any restart of an in-memory broker does.
    """
    stack.stop_component("broker")
    shutil.rmtree(broker_kind(stack.settings).data_dir(stack.settings), ignore_errors=True)
    stack.start_component("broker")
