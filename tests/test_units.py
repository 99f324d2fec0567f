"""Unit tests of pure parts, with no process and no socket: rate limit, watcher query, frames, client dedupe.

Each test names the rule it checks; breaking that rule makes it fail.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from labkit import Delivered, Settings
from labkit.client import _SeenDeliveries, watch_url
from labkit.services.producer import RateLimiter
from labkit.services.wire import text_frame, write_frames_now
from labkit.services.watchers import WatchOptions, parse_watch_query

REPLAY_LIMIT = 100


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1024.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("labkit.services.producer.time.monotonic", fake)
    return fake


def allowed(limiter: RateLimiter, tries: int) -> int:
    return sum(limiter.allow() for _ in range(tries))


# -- the producer's RateLimiter --------------------------------------------------------------


# Rates and steps are powers of two, so the clock's arithmetic is exact.


def test_rate_limiter_allows_one_seconds_worth_at_once_then_refuses(clock: Clock):
    limiter = RateLimiter(8)
    assert allowed(limiter, 8) == 8
    assert not limiter.allow()


def test_rate_limiter_refills_at_its_rate(clock: Clock):
    limiter = RateLimiter(8)
    allowed(limiter, 8)
    clock.now += 1 / 16
    assert not limiter.allow()  # half a token
    clock.now += 1 / 16
    assert limiter.allow() and not limiter.allow()
    clock.now += 0.5
    assert allowed(limiter, 8) == 4


def test_rate_limiter_saves_up_at_most_one_second(clock: Clock):
    limiter = RateLimiter(8)
    clock.now += 3600
    assert allowed(limiter, 100) == 8


def test_rate_limiter_zero_means_unlimited(clock: Clock):
    assert allowed(RateLimiter(0), 10_000) == 10_000


@given(st.floats(1, 1000), st.lists(st.floats(0, 5), min_size=1, max_size=300))
def test_rate_limiter_never_allows_more_than_a_burst_plus_the_rate_times_the_time(rate: float, gaps: list[float]):
    clock = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("labkit.services.producer.time.monotonic", clock)
        limiter = RateLimiter(rate)
        passed = limiter.allow()
        for gap in gaps:
            clock.now += gap
            passed += limiter.allow()
    assert passed <= rate + rate * sum(gaps) + 1e-6


# -- parse_watch_query --------------------------------------------------------------------


def test_a_bare_path_asks_for_everything_live():
    assert parse_watch_query("/", REPLAY_LIMIT) == WatchOptions()
    assert not WatchOptions().resuming


def test_every_parameter_is_read():
    options = parse_watch_query("/?types=a,%20b,,c&replay=5&resume=0:41,2:-1&since=1700000000000&apikey=k", REPLAY_LIMIT)
    assert options.types == frozenset({"a", "b", "c"})
    assert options.replay == 5
    assert options.resume == {0: 41, 2: -1}
    assert options.since_ms == 1.7e12 and options.resuming


def test_the_epoch_is_read_and_anything_else_refused():
    assert parse_watch_query("/?resume=0:1&epoch=3f9a1c0d2e4b5a67", REPLAY_LIMIT).epoch == "3f9a1c0d2e4b5a67"
    assert parse_watch_query("/?resume=0:1", REPLAY_LIMIT).epoch is None
    for bad in ("a%20b", "", "x" * 65, "%00", "a/b"):
        with pytest.raises(ValueError, match="epoch"):
            parse_watch_query(f"/?resume=0:1&epoch={bad}", REPLAY_LIMIT)


def test_resume_alone_or_since_alone_is_resuming():
    assert parse_watch_query("/?resume=3:7", REPLAY_LIMIT) == WatchOptions(resume={3: 7})
    assert parse_watch_query("/?since=5", REPLAY_LIMIT).resuming
    assert parse_watch_query("/?resume=", REPLAY_LIMIT).resume == {}


def test_a_repeated_parameter_takes_its_last_value_but_types_add_up():
    options = parse_watch_query("/?replay=1&replay=2&resume=0:1&resume=0:9&since=1&since=2&types=a&types=b", REPLAY_LIMIT)
    assert (options.replay, options.resume, options.since_ms) == (2, {0: 9}, 2.0)
    assert options.types == frozenset({"a", "b"})


def test_replay_may_ask_for_the_whole_buffer():
    assert parse_watch_query(f"/?replay={REPLAY_LIMIT}", REPLAY_LIMIT).replay == REPLAY_LIMIT


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("colour=red", "unknown query parameter 'colour'"),
        ("types=", "types is empty"),
        ("types=,%20,", "types is empty"),
        ("replay=-1", "replay must be a whole number from 0 to 100"),
        ("replay=1.5", "replay must be"),
        (f"replay={REPLAY_LIMIT + 1}", "replay must be"),
        ("resume=x", "resume takes partition:offset pairs"),
        ("resume=0:1,1", "resume takes partition:offset pairs"),
        ("resume=0:-2", "resume takes partition:offset pairs"),
        ("since=soon", "since must be epoch milliseconds"),
        ("since=-5", "since must be epoch milliseconds"),
        ("since=1e14", "since must be epoch milliseconds"),
        ("since=nan", "since must be epoch milliseconds"),
    ],
)
def test_a_bad_query_is_refused_with_what_to_write(query: str, says: str):
    with pytest.raises(ValueError, match=f"^{says}"):
        parse_watch_query(f"/?{query}", REPLAY_LIMIT)


@given(st.dictionaries(st.integers(0, 999_999), st.integers(-1, 2**62), max_size=20), st.floats(0, 9.9e13))
def test_the_clients_resume_query_reads_back_as_sent(positions: dict[int, int], since_ms: float):
    url = watch_url(Settings(), "ws://gateway/consume-events", ["a", "b"], 0, positions, since_ms)
    options = parse_watch_query(url.removeprefix("ws://gateway/consume-events"), REPLAY_LIMIT)
    assert options.resume == positions and options.types == frozenset({"a", "b"})
    assert options.since_ms == pytest.approx(since_ms, abs=0.5)


# -- text_frame ---------------------------------------------------------------------------


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
    write_frames_now(ws, [text_frame(p) for p in payloads])  # type: ignore[arg-type]
    assert written == [b"".join(Frame(Opcode.TEXT, p).serialize(mask=False, extensions=[]) for p in payloads)]
    ws.protocol.state = State.CLOSING  # as broadcast() does: a connection that is not open is skipped
    write_frames_now(ws, [text_frame(b"late")])  # type: ignore[arg-type]
    assert len(written) == 1


# -- the client's duplicate rule ----------------------------------------------------------


def delivery(partition: int, offset: int, kafka_ts: int = 1, event_id: str = "same") -> Delivered:
    return Delivered(type="t", value=1, id=event_id, partition=partition, offset=offset, kafka_ts=kafka_ts)


def test_the_client_drops_a_record_delivered_twice():
    seen = _SeenDeliveries()
    assert seen.first_time(delivery(0, 5)) and seen.first_time(delivery(1, 5))
    assert not seen.first_time(delivery(0, 5))


def test_the_client_keeps_two_events_with_the_same_id_and_events_without_one():
    seen = _SeenDeliveries()
    assert seen.first_time(delivery(0, 5)) and seen.first_time(delivery(0, 6))
    anonymous = [Delivered(type="t", value=1, partition=0, offset=o, kafka_ts=1) for o in (7, 8)]
    assert all(seen.first_time(event) for event in anonymous)


def test_the_client_keeps_a_new_record_where_a_restarted_log_reuses_an_offset():
    seen = _SeenDeliveries()
    assert seen.first_time(delivery(0, 5, kafka_ts=100))
    assert seen.first_time(delivery(0, 5, kafka_ts=200))  # the broker's log began again
    assert not seen.first_time(delivery(0, 5, kafka_ts=200))


def test_the_client_remembers_a_bounded_number_of_deliveries():
    seen = _SeenDeliveries(size=3)
    for offset in range(4):
        seen.first_time(delivery(0, offset))
    assert len(seen.stamps) == 3 and seen.first_time(delivery(0, 0))
