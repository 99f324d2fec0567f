"""The lessons' lab modules on their own: reading a typed time, keys per partition, a group's share and lag.

The notebooks (06, 07, 08) use them end to end; here each rule is checked where it
can fail alone, against the shared stack's real broker.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from labkit import Sender, Stack
from labkit.lab.groups import ConsumerGroup, keys_for_partitions, partition_for
from labkit.lab.topic import group_lag, parse_when

NOW = datetime(2026, 11, 25, 17, 30, 0)


@pytest.mark.parametrize(("text", "seconds_before"), [("-30s", 30), ("2 m ago", 120), ("1h", 3600), ("17:05:00", 1500)])
def test_a_typed_time_is_read(text: str, seconds_before: int):
    assert parse_when(text, NOW) == int(NOW.timestamp() * 1000) - seconds_before * 1000


def test_an_iso_time_is_read_and_nonsense_is_refused_with_what_to_write():
    assert parse_when("2026-11-25T17:29:00", NOW) == int(NOW.timestamp() * 1000) - 60_000
    with pytest.raises(ValueError, match="cannot read 'tea time' as a time: write -30s"):
        parse_when("tea time", NOW)


async def test_keys_land_on_the_partition_the_producer_gives_them(stack: Stack):
    keys = keys_for_partitions(stack.settings.partitions)
    assert sorted(keys) == list(range(stack.settings.partitions))
    async with Sender(settings=stack.settings) as sender:
        acks = await sender.send_many([{"type": "key-check", "value": 0, "key": key} for key in [*keys.values(),
                                                                                                 "alice"]])
    assert [ack.partition for ack in acks] == [*keys, partition_for("alice", stack.settings.partitions)]


async def test_a_group_splits_the_partitions_and_its_lag_grows_once_it_stops(stack: Stack, event_type):
    settings = stack.settings
    keys = keys_for_partitions(settings.partitions)
    group = ConsumerGroup(settings, event_type=event_type)
    try:
        group.add_member()
        group.add_member()
        owners = await group.settled()
        assert set(owners.values()) == {"member-1", "member-2"} and sorted(owners) == list(range(settings.partitions))
        batch = [{"type": event_type, "value": i,
                  "key": keys[i % settings.partitions]} for i in range(3 * settings.partitions)]
        async with Sender(settings=settings) as sender:
            await sender.send_many(batch)
        await group.wait_for(len(batch))
        for member in group.members:  # each read only what it owns
            assert set(member.counts) <= set(member.owned), (member.name, member.counts, member.owned)
        assert sum(m.total for m in group.members) == len(batch)
    finally:
        group.close()
    caught_up = group_lag(settings, group.group_id)
    assert all(row["lag"] == 0 for row in caught_up), (caught_up, group.log)
    async with Sender(settings=settings) as sender:
        await sender.send_many(batch)
    assert sum(row["lag"] for row in group_lag(settings, group.group_id)) == len(batch)


def test_removing_a_member_when_none_runs_says_what_to_do(stack: Stack):
    with pytest.raises(ValueError, match="no member runs: add one first"):
        ConsumerGroup(stack.settings).remove_member()
