"""The client's duplicate rule: the same (partition, offset) delivered twice is dropped, two events with one id are not.

Pure state, no process and no socket.
"""

from __future__ import annotations

from labkit import Delivered
from labkit.client import SeenDeliveries


def delivery(partition: int, offset: int, kafka_ts: int = 1, event_id: str = "same") -> Delivered:
    return Delivered(type="t", value=1, id=event_id, partition=partition, offset=offset, kafka_ts=kafka_ts)


def test_the_client_drops_a_record_delivered_twice():
    seen = SeenDeliveries()
    assert seen.first_time(delivery(0, 5)) and seen.first_time(delivery(1, 5))
    assert not seen.first_time(delivery(0, 5))


def test_the_client_keeps_two_events_with_the_same_id_and_events_without_one():
    seen = SeenDeliveries()
    assert seen.first_time(delivery(0, 5)) and seen.first_time(delivery(0, 6))
    anonymous = [Delivered(type="t", value=1, partition=0, offset=o, kafka_ts=1) for o in (7, 8)]
    assert all(seen.first_time(event) for event in anonymous)


def test_the_client_keeps_a_new_record_where_a_restarted_log_reuses_an_offset():
    seen = SeenDeliveries()
    assert seen.first_time(delivery(0, 5, kafka_ts=100))
    assert seen.first_time(delivery(0, 5, kafka_ts=200))  # the broker's log began again
    assert not seen.first_time(delivery(0, 5, kafka_ts=200))


def test_the_client_remembers_a_bounded_number_of_deliveries():
    seen = SeenDeliveries(size=3)
    for offset in range(4):
        seen.first_time(delivery(0, offset))
    assert len(seen.stamps) == 3 and seen.first_time(delivery(0, 0))
