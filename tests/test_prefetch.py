"""`prefetched`: the build's background stage keeps order, raises the maker's errors where they
happened, and stops making items when the consumer stops."""

from __future__ import annotations

import threading

import pytest

from featbench.core.prefetch import prefetched


def test_items_come_in_order_and_a_makers_error_is_raised_at_its_item():
    def items():
        yield from range(5)
        raise ValueError("image 5 does not decode")

    got = []
    with pytest.raises(ValueError, match="image 5 does not decode"):
        for item in prefetched(items(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_the_maker_stops_when_the_consumer_stops():
    made = []

    def items():
        for i in range(1000):
            made.append(i)
            yield i

    stream = prefetched(items(), depth=2, name="test-prefetch")
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert not any(t.name == "test-prefetch" for t in threading.enumerate())
    assert len(made) <= 3 + 2 + 1  # taken, queued, the one being put when it stopped
