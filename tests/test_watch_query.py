"""The consumer's watcher query (``parse_watch_query``): what a watcher may ask for, and what is refused with
what to write.

Pure parsing, no process and no socket; the client's own resume query is read back as sent.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit import Settings
from labkit.client import watch_url
from labkit.services.watchers import WatchOptions, parse_watch_query

REPLAY_LIMIT = 100


def test_a_bare_path_asks_for_everything_live():
    assert parse_watch_query("/", REPLAY_LIMIT) == WatchOptions()
    assert not WatchOptions().resuming


def test_every_parameter_is_read():
    options = parse_watch_query("/?types=a,%20b,,c&replay=5&resume=0:41,2:-1&since=1700000000000&apikey=k",
                                REPLAY_LIMIT)
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
    options = parse_watch_query("/?replay=1&replay=2&resume=0:1&resume=0:9&since=1&since=2&types=a&types=b",
                                REPLAY_LIMIT)
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
