"""The notebook widgets against the real stack: what they refuse, what they count, what they leave behind."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from waiting import wait_until

from labkit import Sender, SendError, Stack
from labkit.client import as_event
from labkit.events import encode
from labkit.lab.live import LiveChart
from labkit.lab.widgets import EventSender


def own_tasks() -> set[asyncio.Task]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()}


def shown_under(form: EventSender, field: str) -> str:
    """The red text under a field, as the browser shows it."""
    return form.messages[field].value


async def test_form_refuses_bad_input_inline_and_sends_nothing(stack: Stack, event_type: str):
    form = EventSender(stack.settings)
    try:
        form.type_box.value = "  "
        assert await form.send() is None
        assert form.problem == "type is empty: choose one or type a name" and "color" in shown_under(form, "type")
        form.type_box.value = event_type
        for data, problem in [("{oops", "data is not valid JSON"), ("[1, 2]", "data must be a JSON object")]:
            form.data_box.value = data
            assert form.problems["data"].startswith(problem)  # shown while typing, before any send
            assert problem in shown_under(form, "data") and shown_under(form, "value") == ""
            assert await form.send() is None and await form.send_burst(5, rate=100) == 0
        assert (form.sent, form.acked, form.errors, form.sender) == (0, 0, 0, None)
        form.data_box.value = '{"page": "/home"}'
        assert form.problem is None and shown_under(form, "data") == ""
        ack = await form.send()
        assert ack is not None and ack.ok and (form.sent, form.acked, form.errors) == (1, 1, 0)
    finally:
        await form.aclose()


async def test_numbers_it_cannot_take_are_said_and_kept(stack: Stack, event_type: str):
    form = EventSender(stack.settings)
    form.type_box.value = event_type
    try:
        for typed, words in [("abc", "'abc' is not a number"), ("1e309", "value 1e309: must be a finite number"),
                             ("nan", "value nan: must be a finite number"), ("", "value is empty")]:
            form.value_box.value = typed
            assert words in form.problems["value"] and words.replace("'", "&#x27;") in shown_under(form, "value")
            assert await form.send() is None
            assert form.value_box.value == typed  # the user's text stays as typed, never replaced by a number
        for count, rate, field, words in [("0", "10", "burst", "at least 1; not 0"), ("-5", "10", "burst", "not -5"),
                                          ("2.5", "10", "burst", "whole number"), ("10", "0", "rate", "above 0; not 0"),
                                          ("10", "abc", "rate", "'abc' is not a number")]:
            form.value_box.value = "1"
            form.burst_count.value, form.burst_rate.value = count, rate
            assert words in form.problems[field], form.problems
            assert await form.send_burst() == 0
            assert (form.burst_count.value, form.burst_rate.value) == (count, rate)
        assert (form.sent, form.acked, form.errors, form.sender) == (0, 0, 0, None)
        form.value_box.value, form.burst_count.value, form.burst_rate.value = 2.5, 3, 1000  # numbers from code too
        assert (form.value_box.value, form.burst_count.value, form.problems) == ("2.5", "3", {})
        assert await form.send_burst() == 3 and (form.sent, form.acked, form.errors) == (3, 3, 0)
        ack = await form.send()
        assert ack is not None and ack.ok
    finally:
        await form.aclose()


async def test_the_form_refuses_what_the_producer_refuses_and_nothing_more(stack: Stack, event_type: str):
    """Too long a key or type, and a frame one byte over the producer's limit, show in red.

    A frame at the limit itself is acked.
    """""
    form = EventSender(stack.settings)
    form.type_box.value = event_type
    limit = stack.settings.max_frame_bytes
    try:
        form.key_box.value = "k" * 257
        assert form.problems == {"key": "key is 257 characters long; at most 256"}
        assert await form.send() is None and await form.send_burst(30, rate=1000) == 0
        assert await form.send({"type": event_type, "value": 1, "key": "k" * 257}) is None  # from code too
        assert "at most 256" in shown_under(form, "key") and form.reply_log.value == ""  # no raw ValidationError
        assert (form.sent, form.acked, form.errors) == (0, 0, 0)
        form.key_box.value = ""

        def event_of_size(size: int) -> dict:
            event: dict[str, Any] = {"type": event_type, "value": 1, "id": "x" * 32, "sent_at": 1.5,
                                     "data": {"pad": ""}}
            event["data"]["pad"] = "a" * (size - len(encode(as_event(event))))
            assert len(encode(as_event(event))) == size
            return event

        too_big = event_of_size(limit + 1)
        assert await form.send(too_big) is None
        assert f"{limit + 1:,} bytes" in form.problems["data"] and f"at most {limit:,}" in shown_under(form, "data")
        assert (form.sent, form.errors) == (0, 0)
        ack = await form.send(event_of_size(limit))  # the largest frame the producer takes goes through
        assert ack is not None and ack.ok and (form.sent, form.acked, form.errors) == (1, 1, 0)
        async with Sender(settings=stack.settings) as sender:  # and the producer indeed refuses one byte more
            with pytest.raises(SendError):
                await sender.send(too_big)

        form.data_box.value = json.dumps({"pad": "a" * limit})
        assert "shorten data" in form.problems["data"] and await form.send() is None and form.sent == 1
    finally:
        await form.aclose()


async def test_form_keeps_one_connection_and_reopens_it(stack: Stack, event_type: str):
    form = EventSender(stack.settings)
    form.type_box.value = event_type
    try:
        await form.send()
        first = form.sender
        await form.send_burst(30, rate=1000)
        assert form.sender is first and (form.sent, form.acked, form.errors) == (31, 31, 0)
        assert first is not None and first.ws is not None
        await first.ws.close()  # as if the gateway had restarted
        ack = await form.send()
        assert ack is not None and ack.ok
        assert form.sender is not first and form.connected
    finally:
        await form.aclose()


async def test_stop_ends_a_burst_and_close_leaves_nothing(stack: Stack, event_type: str):
    before = own_tasks()
    form = EventSender(stack.settings)
    form.type_box.value = event_type
    form.burst_count.value, form.burst_rate.value = "1000", "50"
    form.burst_button.click()  # what a click in the browser does: a task on the kernel's loop
    await wait_until(lambda: form.acked >= 5, 10, lambda: f"the burst got {form.acked} of 5 acks")
    form.burst_button.click()  # a second burst while one runs is refused, in words under the burst fields
    assert form.problems == {"burst": "a burst is already running: stop it first"}
    form.stop_button.click()
    await wait_until(lambda: not form.busy, 10, "Stop did not end the burst")
    assert form.problems == {} and shown_under(form, "burst") == ""  # the message went with the burst
    assert 5 <= form.sent < 1000 and form.acked == form.sent and form.progress.bar_style == "warning"
    assert form.burst_note.value == f"stopped: you pressed Stop, after {form.sent:,} of 1,000", form.burst_note.value
    connection = form.sender
    await form.aclose()
    assert connection is not None and connection.ws is not None
    assert not form.connected and connection.ws.state.name == "CLOSED"
    assert own_tasks() <= before


async def test_chart_counts_throttles_pauses_and_closes_cleanly(stack: Stack, event_type: str):
    before = own_tasks()
    watchers = stack.health("consumer")["watchers"]
    chart = LiveChart(stack.settings, types=[event_type])
    await chart.ready()
    began = time.monotonic()
    async with Sender(settings=stack.settings) as sender:
        await sender.send_many(({"type": event_type, "value": i} for i in range(3000)), batch=100)
    await chart.wait_for(3000, event_type)
    elapsed = time.monotonic() - began
    assert chart.received == chart.counts[event_type] == 3000
    assert chart.redraws <= elapsed * chart.fps + 3, (chart.redraws, elapsed)  # not one redraw per event
    latency = chart.latency_percentiles()
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    scatter = next(trace for trace in chart.figure.data if trace.name == event_type)
    drawn = len(scatter.x)  # at most points_per_second a second: the value panel covers the window at any rate
    assert drawn + chart.thinned == 3000 and 2 <= drawn <= chart.points_per_second * (elapsed + 1)
    values = [y for y in scatter.y if y is not None]  # None breaks a line at a gap
    assert values[0] == 0 and values == sorted(values)  # the first event, then later ones in order
    # Spread over time, not a clump each second.
    spacing = min(b - a for a, b in zip(scatter.x, scatter.x[1:], strict=False))
    assert spacing >= 1 / chart.points_per_second, (spacing, chart.points_per_second)
    assert chart.run_percentiles()["p99"] >= latency["p50"]

    chart.pause()
    frozen = chart.redraws
    async with Sender(settings=stack.settings) as sender:
        await sender.send_many([{"type": event_type, "value": -1}] * 5)
    await chart.wait_for(3005, event_type)
    passes = chart.draw_passes
    await wait_until(lambda: chart.draw_passes >= passes + 2, 10, "the redraw loop did not run while paused")
    assert chart.redraws == frozen and len(scatter.x) == drawn
    chart.resume()
    assert len(scatter.x) + chart.thinned == 3005

    assert stack.health("consumer")["watchers"] == watchers + 1
    await chart.aclose()
    assert not chart.running and own_tasks() <= before
    await wait_until(lambda: stack.health("consumer")["watchers"] == watchers, 10,
                     "the chart's connection did not close")


def test_tables_align_and_round_and_the_architecture_is_the_running_stack(stack: Stack):
    from labkit.lab.architecture import architecture
    from labkit.lab.tables import html_table

    table = html_table({"producer": stack.health("producer"), "consumer": stack.health("consumer")}).data
    assert "<td style='padding:2px 10px;text-align:left;vertical-align:top'>producer</td>" in table
    rows = html_table([{"name": "a", "p50 ms": 0.123456, "p99 ms": 1302.456789, "count": 3}]).data
    assert ">0.123<" in rows and ">1,302<" in rows and "1302.45" not in rows
    assert rows.count("text-align:right") == 6 and rows.count("text-align:left") == 2  # numbers right, text left
    side_by_side = html_table({"producer": {"senders": 1}, "consumer": {"watchers": 2.5}}, vertical=True).data
    assert ">senders<" in side_by_side and ">2.5<" in side_by_side and "<th" in side_by_side
    settings = stack.settings
    upstreams = {route["service"]: route["upstream"] for route in stack.routes()}
    assert upstreams == {"producer": f"http://{settings.host}:{settings.producer_port}",
                         "consumer": f"http://{settings.host}:{settings.consumer_port}"}  # not kong.yml's producer:6789
    svg = architecture(stack).data
    for port in (settings.gateway_port, settings.producer_port, settings.consumer_port, settings.kafka_port):
        assert f"{settings.host}:{port}" in svg
    assert "/produce-events" in svg and "key-auth" in svg and "producer:6789" not in svg
