"""Unit tests of the fan-out core (labkit/services/fanout.py): pure state, no socket, no event loop.

``WatcherState.live`` says what a live frame means for a watcher (send now, queue,
skip as a duplicate, overflow), ``next_queued`` what the writer sends next, and
``missed`` what a frame read back while catching up means.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from labkit.services.fanout import OVERFLOW, QUEUE, SEND, SKIP, Delivery, WatcherState


def frame(partition: int, offset: int, type_: str = "t") -> Delivery:
    return Delivery(partition, offset, type_, b"{}")


def idle(state: WatcherState) -> WatcherState:
    state.idle = True
    return state


def test_an_idle_watcher_that_keeps_up_is_sent_a_live_frame_at_once():
    state = idle(WatcherState(None, limit=10))
    assert state.live(frame(0, 1), writable=True) is SEND
    assert not state.queue


def test_a_busy_writer_or_a_full_socket_queues_the_frame_in_order():
    state = WatcherState(None, limit=10)
    assert state.live(frame(0, 1), writable=True) is QUEUE  # the writer is busy
    idle(state)
    assert state.live(frame(0, 2), writable=True) is QUEUE  # frames wait before it: order first
    assert state.live(frame(0, 3), writable=False) is QUEUE
    assert [state.next_queued(), state.next_queued(), state.next_queued(), state.next_queued()] == [
        frame(0, 1), frame(0, 2), frame(0, 3), None]


def test_a_full_queue_overflows_once_then_the_state_is_closed():
    state = WatcherState(None, limit=2)
    assert [state.live(frame(0, n), writable=False) for n in range(3)] == [QUEUE, QUEUE, OVERFLOW]
    assert state.closed
    assert state.live(frame(0, 9), writable=True) is SKIP


def test_a_resume_point_skips_what_the_watcher_saw_until_a_live_frame_settles_the_partition():
    state = idle(WatcherState(None, limit=10, resume={0: 10}))
    assert state.live(frame(0, 10), writable=True) is SKIP
    assert state.live(frame(0, 11), writable=True) is SEND
    assert state.unsettled == set()
    assert state.live(frame(0, 3), writable=True) is SEND  # settled: an offset going back is the log beginning again


def test_frames_read_back_count_as_sent_and_do_not_settle():
    state = WatcherState(None, limit=10, resume={0: 10}, catching_up=True)
    state.recovered({0: 10})
    assert [state.missed(frame(0, n)) for n in (9, 11, 12)] == [SKIP, SEND, SEND]
    assert state.missed(frame(2, 0)) is SEND  # a partition it never saw: read back from `since`
    assert state.unsettled == {0, 2}
    for live in (frame(0, 12), frame(0, 13), frame(2, 0), frame(2, 1)):
        assert state.live(live, writable=True) is QUEUE  # catching up: the writer is not idle
    assert state.first_live == {0: 12, 2: 0}
    state.caught_up()
    assert [state.next_queued(), state.next_queued(), state.next_queued()] == [frame(0, 13), frame(2, 1), None]


def test_read_back_skips_types_the_watcher_did_not_ask_for():
    state = WatcherState(frozenset({"a"}), limit=10, resume={}, catching_up=True)
    assert state.missed(frame(0, 1, "b")) is SKIP
    assert state.missed(frame(0, 1, "a")) is SEND
    assert not state.wants("labkit.probe") and WatcherState(None, 1).wants("b")
    assert not WatcherState(None, 1).wants("labkit.probe")


def test_a_restarted_log_counts_nothing_as_sent():
    state = idle(WatcherState(None, limit=10, resume={0: 10**12}))
    state.log_restarted()
    assert state.live(frame(0, 0), writable=True) is SEND


@given(st.integers(-1, 40), st.integers(0, 30), st.lists(st.integers(0, 80), max_size=40), st.integers(1, 50))
@hypothesis_settings(max_examples=200, deadline=None)
def test_each_offset_goes_out_once_whatever_way_it_arrives(resume: int, read_back: int, live: list[int], limit: int):
    """Read back, then live frames sent at once or queued: above the resume point, each offset at most once."""
    state = WatcherState(None, limit=limit, resume={0: resume}, catching_up=True)
    state.recovered({0: resume})
    sent = [n for n in range(resume + 1, resume + 1 + read_back) if state.missed(frame(0, n)) is SEND]
    state.caught_up()
    for step, offset in enumerate(sorted(set(live))):  # Kafka gives each offset once, in order
        state.idle = step % 3 == 0
        action = state.live(frame(0, offset), writable=step % 2 == 0)
        if action is SEND:
            sent.append(offset)
        if action is OVERFLOW:
            break
        if step % 4 == 0:
            while (queued := state.next_queued()) is not None:
                sent.append(queued.offset)
    while not state.closed and (queued := state.next_queued()) is not None:
        sent.append(queued.offset)
    assert all(offset > resume for offset in sent)
    assert sorted(set(sent)) == sent  # in order, no offset twice


def test_a_whole_batch_goes_at_once_only_when_no_frame_could_be_queued_or_skipped():
    state = idle(WatcherState(None, limit=10))
    assert state.takes_all(writable=True) and not state.takes_all(writable=False)
    resuming = idle(WatcherState(None, limit=10, resume={0: 5}))
    assert not resuming.takes_all(writable=True)  # frames at or below 5 would be duplicates
    assert resuming.live(frame(0, 6), writable=True) is SEND
    assert resuming.takes_all(writable=True)
    state.idle = False
    assert not state.takes_all(writable=True)
